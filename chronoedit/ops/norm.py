"""Normalisations and adaLN modulation, each computed in fp32 whatever the input dtype (an fp32 island)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def fp32_layer_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float) -> Tensor:
    """LayerNorm over the last dim in fp32; the result keeps ``x``'s dtype."""
    w = None if weight is None else weight.float()
    b = None if bias is None else bias.float()
    return F.layer_norm(x.float(), x.shape[-1:], w, b, eps).to(x.dtype)


def rms_norm(x: Tensor, weight: Tensor | None, eps: float) -> Tensor:
    """x / rms(x) over the last dim in fp32, times ``weight``; the result keeps ``x``'s dtype."""
    w = None if weight is None else weight.float()
    return F.rms_norm(x.float(), x.shape[-1:], w, eps).to(x.dtype)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: ``x * (1 + scale) + shift`` in fp32, one fused pass (``shift``/``scale`` broadcast over tokens)."""
    return torch.addcmul(shift, x.float(), 1 + scale)


def gated_residual(x: Tensor, y: Tensor, gate: Tensor) -> Tensor:
    """``x + y * gate`` in fp32, one fused pass, returned in ``x``'s dtype."""
    return torch.addcmul(x.float(), y.float(), gate).to(x.dtype)
