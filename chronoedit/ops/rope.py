"""Rotary position embeddings with interleaved pairs (channels 2i, 2i+1 rotate together).

Angles are computed in float64 (position × inverse frequency) and only their cos/sin are rounded to fp32,
so a table never loses precision at large positions; the rotation itself runs in fp32.
"""

from __future__ import annotations

import torch
from torch import Tensor


def rope_frequencies(dim: int, theta: float = 10000.0) -> Tensor:
    """Inverse frequencies ``theta^(-2i/dim)`` for ``i < dim/2``, float64, shape (dim/2,)."""
    if dim % 2:
        raise ValueError(f"rotary dim must be even, got {dim}")
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))


def rope_angles(positions: Tensor, inv_freq: Tensor) -> Tensor:
    """Angles ``pos × inv_freq`` in float64: positions (L,), inv_freq (K,) -> (L, K)."""
    return torch.outer(positions.to(torch.float64), inv_freq.to(torch.float64))


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate interleaved channel pairs of ``x (B, L, H, D)`` by angles with ``cos, sin (L, D/2)`` (fp32).

    ``(x₀, x₁) -> (x₀ cos − x₁ sin, x₀ sin + x₁ cos)`` per pair; computed in fp32, returned in ``x``'s dtype.
    """
    xf = x.float().unflatten(-1, (-1, 2))  # (B, L, H, D/2, 2)
    x0, x1 = xf.unbind(-1)
    cos, sin = cos[:, None, :], sin[:, None, :]  # (L, 1, D/2): broadcast over heads
    out = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)  # (B, L, H, D/2, 2)
    return out.flatten(-2).to(x.dtype)
