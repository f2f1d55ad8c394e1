"""The fp32 islands: every model class names the parameters that stay fp32 in a bf16/fp16 model
(``keep_fp32(name) -> bool``, a static method); one cast honours them for every model, built on ``meta`` or not."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

KeepFp32 = Callable[[str], bool]


def keep_fp32_of(model: nn.Module | type) -> KeepFp32 | None:
    """A model's (or model class's) fp32-island rule, None if it declares none."""
    keep = getattr(model if isinstance(model, type) else type(model), "keep_fp32", None)
    return keep if callable(keep) else None


def cast_params(model: nn.Module, dtype: torch.dtype, keep_fp32: KeepFp32 | None = None) -> nn.Module:
    """Cast floating parameters and buffers to ``dtype`` except the fp32 islands (``keep_fp32(name)``).

    Works on ``meta`` models too (cheap), so that a strict load then casts each tensor as it is read.
    """
    for name, p in list(model.named_parameters()) + list(model.named_buffers()):
        if not p.is_floating_point():
            continue
        target = torch.float32 if (keep_fp32 is not None and keep_fp32(name)) else dtype
        if p.dtype != target:
            p.data = p.data.to(target)
    return model


def cast_model(model: nn.Module, dtype: torch.dtype | None) -> nn.Module:
    """``model`` in ``dtype`` with its own fp32 islands kept (None: unchanged)."""
    return model if dtype is None else cast_params(model, dtype, keep_fp32_of(model))


def island_dtype(keep_fp32: KeepFp32 | None, name: str, dtype: torch.dtype) -> torch.dtype:
    """The dtype tensor ``name`` is stored in when its model is cast to ``dtype``."""
    return torch.float32 if keep_fp32 is not None and keep_fp32(name) else dtype


__all__ = ["KeepFp32", "cast_model", "cast_params", "island_dtype", "keep_fp32_of"]
