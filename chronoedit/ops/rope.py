"""Rotary position embeddings with interleaved pairs (channels 2i, 2i+1 rotate together).

Angles are computed in float64 (position × inverse frequency) and only their cos/sin are rounded to fp32,
so a table never loses precision at large positions. A table is a complex64 tensor ``cos + i·sin``; the
rotation is one complex multiply in fp32: ``(x₀ + i x₁)(cos + i sin)``.
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


def rope_table(angles: Tensor) -> Tensor:
    """complex64 rotations ``cos + i·sin`` from float64 angles (cos and sin each rounded once to fp32)."""
    return torch.complex(angles.cos().float(), angles.sin().float())


def apply_rope(x: Tensor, freqs: Tensor) -> Tensor:
    """Rotate interleaved channel pairs of ``x (B, L, H, D)`` by ``freqs (L, D/2)`` complex64.

    ``(x₀, x₁) -> (x₀ cos − x₁ sin, x₀ sin + x₁ cos)`` per pair; computed in fp32, returned in ``x``'s dtype.
    """
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))  # (B, L, H, D/2) complex
    return torch.view_as_real(pairs * freqs[:, None, :]).flatten(-2).to(x.dtype)  # (B, L, H, D)
