"""Runtime / trainable LoRA adapters on ``nn.Linear`` layers, without renaming the base parameters.

``add_adapter`` swaps a target ``nn.Linear`` for a :class:`LoRALinear` that shares the same weight and bias
Parameters (so ``blocks.0.self_attn.q.weight`` keeps its name) and adds per-adapter ``lora_A``/``lora_B``:
``y = x Wᵀ + b + Σ_a s_a · (x A_aᵀ) B_aᵀ``. The LoRA parameters live inside the block they adapt, so
FSDP2 applied per block shards them with it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn

from chronoedit.lora.weights import LoRAWeights, check_targets


class LoRALinear(nn.Linear):
    """``nn.Linear`` + named low-rank adapters (``lora_A[name] (r, in)``, ``lora_B[name] (out, r)``)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.lora_A = nn.ParameterDict()
        self.lora_B = nn.ParameterDict()
        self.lora_bias = nn.ParameterDict()  # full bias deltas, strength applied
        self.lora_scale: dict[str, float] = {}  # alpha / rank × strength, per adapter

    @classmethod
    def wrap(cls, linear: nn.Linear) -> LoRALinear:
        """A LoRALinear sharing ``linear``'s weight and bias Parameters (no copy)."""
        with torch.device("meta"):
            new = cls(linear.in_features, linear.out_features, bias=linear.bias is not None)
        new.weight = linear.weight
        new.bias = linear.bias
        return new

    def unwrap(self) -> nn.Linear:
        with torch.device("meta"):
            lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        lin.weight, lin.bias = self.weight, self.bias
        return lin

    def forward(self, x: Tensor) -> Tensor:
        y = super().forward(x)
        for name, a in self.lora_A.items():
            b = self.lora_B[name]
            delta = self.lora_scale[name] * nn.functional.linear(nn.functional.linear(x.to(a.dtype), a), b)  # (…, out)
            if name in self.lora_bias:
                delta = delta + self.lora_bias[name]  # a full bias delta, strength already applied
            y = y + delta.to(y.dtype)
        return y


def _swap(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def init_lora_a(rank: int, in_features: int, dtype: torch.dtype, generator: torch.Generator | None = None) -> Tensor:
    """A new adapter's down projection (rank, in): uniform(±1/√in), the kaiming_uniform(a=√5) bound PEFT uses;
    the up projection starts at zero."""
    bound = 1 / math.sqrt(in_features)
    return torch.empty(rank, in_features, dtype=dtype).uniform_(-bound, bound, generator=generator)


def add_adapter(
    model: nn.Module,
    targets: Iterable[str] | Mapping[str, LoRAWeights],
    *,
    name: str = "default",
    rank: int | None = None,
    alpha: float | None = None,
    strength: float = 1.0,
    dtype: torch.dtype | None = None,
    generator: torch.Generator | None = None,
) -> list[str]:
    """Add adapter ``name`` to the target Linear layers; returns the adapted module names.

    ``targets`` is either a mapping of module name to :class:`LoRAWeights` (loaded LoRA, applied at run time
    with ``strength``) or a list of module names (a new trainable adapter of ``rank``: A Kaiming-uniform,
    B zero, so training starts from the base model). ``.diff`` deltas cannot run unfused: fuse those.
    """
    modules = dict(model.named_modules())
    if isinstance(targets, Mapping):
        check_targets(model, targets, what=f"adapter {name!r}")
        if any(w.diff is not None for w in targets.values()):
            raise ValueError(f"adapter {name!r} has full .diff deltas, which only fuse_lora can apply")
        items = dict(targets)
    else:
        if rank is None or rank < 1:
            raise ValueError(f"a new adapter needs rank >= 1, got {rank}")
        items = {t: None for t in targets}
        unknown = [t for t in items if not isinstance(modules.get(t), nn.Linear)]
        if unknown:
            raise ValueError(f"LoRA targets that are not nn.Linear modules of the model: {unknown[:8]}")
    done = []
    for target, w in items.items():
        mod = modules[target]
        if not isinstance(mod, nn.Linear):
            raise ValueError(f"runtime LoRA supports nn.Linear only; {target} is {type(mod).__name__}")
        if not isinstance(mod, LoRALinear):
            mod = LoRALinear.wrap(mod)
            _swap(model, target, mod)
        if name in mod.lora_A:
            raise ValueError(f"{target} already has an adapter named {name!r}")
        dev = mod.weight.device
        pdtype = dtype or (torch.float32 if mod.weight.dtype in (torch.float16, torch.bfloat16) else mod.weight.dtype)
        if w is None:
            mod.lora_A[name] = nn.Parameter(init_lora_a(rank, mod.in_features, pdtype, generator).to(dev))
            mod.lora_B[name] = nn.Parameter(torch.zeros(mod.out_features, rank, device=dev, dtype=pdtype))
            mod.lora_scale[name] = strength * (1.0 if alpha is None else alpha / rank)
        else:
            mod.lora_A[name] = nn.Parameter(w.down.to(dev, pdtype), requires_grad=False)
            mod.lora_B[name] = nn.Parameter(w.up.to(dev, pdtype), requires_grad=False)
            if w.bias is not None:
                mod.lora_bias[name] = nn.Parameter(strength * w.bias.to(dev, pdtype), requires_grad=False)
            mod.lora_scale[name] = strength * w.scale
        done.append(target)
    return done


def remove_adapters(model: nn.Module) -> None:
    """Restore plain ``nn.Linear`` layers everywhere (the base Parameters are untouched)."""
    for name, mod in list(model.named_modules()):
        if isinstance(mod, LoRALinear):
            _swap(model, name, mod.unwrap())


def lora_parameters(model: nn.Module, name: str = "default") -> dict[str, LoRAWeights]:
    """The adapter ``name`` of every LoRALinear as :class:`LoRAWeights` (alpha folded into the scale)."""
    out = {}
    for mname, mod in model.named_modules():
        if isinstance(mod, LoRALinear) and name in mod.lora_A:
            a, b = mod.lora_A[name].detach(), mod.lora_B[name].detach()
            out[mname] = LoRAWeights(
                down=a,
                up=b,
                alpha=mod.lora_scale[name] * a.shape[0],
                bias=mod.lora_bias[name].detach() if name in mod.lora_bias else None,
            )
    return out
