"""Shared test utilities: relative error, seeded random weights for reference models."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def rel_err(ours: Tensor, ref: Tensor) -> float:
    """‖ours − ref‖₂ / ‖ref‖₂ in float64 (the parity metric used throughout the tests)."""
    ours, ref = ours.detach().double(), ref.detach().double()
    return ((ours - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def max_abs(ours: Tensor, ref: Tensor) -> float:
    return (ours.detach().double() - ref.detach().double()).abs().max().item()


@torch.no_grad()
def randomize_(module: nn.Module, seed: int = 0, scale: float = 0.2) -> nn.Module:
    """Overwrite every floating parameter with N(mean, scale²) noise, norms around 1: weights that a key-map
    or layout mistake cannot survive (default inits leave norms at 1 and biases at 0, hiding such errors)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in module.named_parameters():
        if not p.is_floating_point():
            continue
        noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
        is_norm_weight = ("norm" in name or "gamma" in name or name.endswith("ln.weight")) and p.ndim == 1
        base = 1.0 if is_norm_weight else 0.0
        fan_in = p.shape[1] if p.ndim >= 2 else 1
        for s in p.shape[2:]:
            fan_in *= s
        std = scale if p.ndim < 2 else (1.0 / fan_in) ** 0.5
        p.copy_((base + std * noise).to(p.dtype))
    return module
