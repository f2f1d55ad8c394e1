"""Fuse LoRAs into a model's weights and unfuse them back bit-exactly.

Fusing adds ``strength · ΔW`` (computed in fp32) to each target weight in place. An exact unfuse cannot
subtract (``(W + Δ) − Δ ≠ W`` in floating point), so the fused handle keeps the original tensors of the
touched parameters (on CPU, or where ``backup_device`` says) and restores them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from chronoedit.lora.weights import LoRAWeights, check_targets


@dataclass
class FusedLoRA:
    """What :func:`fuse_lora` changed; :meth:`unfuse` puts every touched parameter back exactly."""

    model: nn.Module
    originals: dict[str, Tensor] = field(default_factory=dict)  # parameter name -> original values

    @torch.no_grad()
    def unfuse(self) -> None:
        params = dict(self.model.named_parameters())
        for name, original in self.originals.items():
            params[name].copy_(original)
        self.originals.clear()


@torch.no_grad()
def fuse_lora(
    model: nn.Module,
    loras: Sequence[tuple[Mapping[str, LoRAWeights], float]],
    *,
    backup_device: torch.device | str = "cpu",
) -> FusedLoRA:
    """Fuse several LoRAs, each with its own strength: ``W ← W + Σ strength_i · ΔW_i`` (sum in fp32)."""
    for i, (lora, _) in enumerate(loras):
        check_targets(model, lora, what=f"LoRA #{i}")
    modules = dict(model.named_modules())
    handle = FusedLoRA(model)
    deltas: dict[str, Tensor] = {}  # parameter name -> summed fp32 delta
    params = dict(model.named_parameters())
    for lora, strength in loras:
        for name, w in lora.items():
            if name not in modules:  # a bare parameter (blocks.N.modulation): its full .diff
                delta = strength * w.diff.float().to(params[name].device)
                deltas[name] = delta if name not in deltas else deltas[name] + delta
                continue
            mod = modules[name]
            for pname, delta in (("weight", w.delta_weight()), ("bias", None if w.bias is None else w.bias.float())):
                if delta is None:
                    continue
                key = f"{name}.{pname}"
                delta = strength * delta.to(getattr(mod, pname).device)
                deltas[key] = delta if key not in deltas else deltas[key] + delta
    for key, delta in deltas.items():
        p = params[key]
        handle.originals[key] = p.detach().to(backup_device, copy=True)
        p.copy_((p.float() + delta).to(p.dtype))
    return handle
