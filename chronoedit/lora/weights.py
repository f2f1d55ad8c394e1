"""The canonical LoRA of one module: ``ΔW = (alpha / rank) · up @ down``, plus optional bias / full deltas."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from chronoedit.checkpoint.errors import CheckpointError, name_some


@dataclass
class LoRAWeights:
    """One module's LoRA. ``down (r, in)`` = PEFT ``lora_A``, ``up (out, r)`` = ``lora_B``.

    ``alpha`` None means alpha = rank (scale 1, the PEFT/diffusers convention when no alpha is stored).
    ``bias`` is a full bias delta added as is (``.diff_b``; a PEFT ``lora_B.bias`` is read as
    ``alpha/rank × lora_B.bias``, which is what PEFT adds); ``diff`` is a full weight delta (``.diff``, e.g. for
    norms), added to the weight as is. Only ``up @ down`` is scaled by ``alpha / rank``.
    """

    down: Tensor | None = None
    up: Tensor | None = None
    alpha: float | None = None
    bias: Tensor | None = None
    diff: Tensor | None = None

    @property
    def rank(self) -> int:
        return 0 if self.down is None else self.down.shape[0]

    @property
    def scale(self) -> float:
        """alpha / rank (1.0 when alpha is absent)."""
        return 1.0 if self.alpha is None or self.rank == 0 else float(self.alpha) / self.rank

    def delta_weight(self, dtype: torch.dtype = torch.float32) -> Tensor | None:
        """The full weight delta this LoRA adds (scale included), in ``dtype``; None if it adds none."""
        delta = None
        if self.down is not None:
            down, up = self.down.to(dtype), self.up.to(dtype)
            if down.ndim > 2:  # conv LoRA: (r, in, *k) and (out, r, 1, …)
                delta = (up.flatten(1) @ down.flatten(1)).view(up.shape[0], *down.shape[1:]) * self.scale
            else:
                delta = (up @ down) * self.scale
        if self.diff is not None:
            delta = self.diff.to(dtype) if delta is None else delta + self.diff.to(dtype)
        return delta


def check_targets(model: nn.Module, loras: Mapping[str, LoRAWeights], what: str = "LoRA") -> None:
    """Every target names a module of ``model`` and every delta fits its parameter; one error names all misfits."""
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    missing = [name for name in loras if name not in modules and name not in params]
    misfit = []
    for name, w in loras.items():
        mod = modules.get(name)
        if mod is None:
            if name in params:  # a bare parameter (blocks.N.modulation): a full .diff of its shape, nothing else
                shape = tuple(params[name].shape)
                if w.down is not None or w.bias is not None or w.diff is None:
                    misfit.append(f"{name}: a parameter, not a layer: only a full .diff applies")
                elif tuple(w.diff.shape) != shape:
                    misfit.append(f"{name}: diff {tuple(w.diff.shape)} vs parameter {shape}")
            continue
        weight = getattr(mod, "weight", None)
        if weight is not None and weight.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
            misfit.append(f"{name}: weight stored in {weight.dtype} (load the DiT with fp8='dequantize' to use LoRAs)")
            continue
        if w.down is not None:
            if w.up is None or w.up.shape[1] != w.down.shape[0]:
                misfit.append(f"{name}: up/down ranks differ")
            elif weight is None or (w.up.shape[0], w.down.shape[1]) != tuple(weight.shape[:2]):
                misfit.append(f"{name}: LoRA {w.up.shape[0]}x{w.down.shape[1]} vs weight {tuple(weight.shape)}")
        if w.diff is not None and (weight is None or tuple(w.diff.shape) != tuple(weight.shape)):
            misfit.append(
                f"{name}: diff {tuple(w.diff.shape)} vs weight {None if weight is None else tuple(weight.shape)}"
            )
        bias = getattr(mod, "bias", None)
        if w.bias is not None and (bias is None or tuple(w.bias.shape) != tuple(bias.shape)):
            misfit.append(
                f"{name}: bias delta {tuple(w.bias.shape)} vs bias {None if bias is None else tuple(bias.shape)}"
            )
    problems = []
    if missing:
        problems.append(f"{len(missing)} targets not in the model: {name_some(missing)}")
    if misfit:
        problems.append(f"{len(misfit)} misshaped: {name_some(misfit, 6)}")
    if problems:
        raise CheckpointError(f"{what}: " + "; ".join(problems))
