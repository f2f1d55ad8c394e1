"""3D rotary embedding of the DiT, with the ChronoEdit temporal skip.

The head dim ``d`` is split into (t, h, w) = (d−4⌊d/6⌋, 2⌊d/6⌋, 2⌊d/6⌋) channels; each axis rotates its
channels by its own position (interleaved pairs, theta 10000). Spatial positions are 0..H−1 and 0..W−1.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from chronoedit.ops.rope import rope_angles, rope_frequencies, rope_table


def temporal_positions(num_frames: int, skip_len: int) -> list[int]:
    """Temporal RoPE positions of ``num_frames`` latent frames: the ChronoEdit temporal skip.

    Plain editing denoises 2 latent frames (the input image and the edit). They are placed at {0, skip−1}:
    the edit sits where the last frame of a ``skip_len``-frame reasoning video would sit, so the model sees
    the same geometry with and without temporal reasoning. Any other frame count uses 0..T−1.
    """
    if num_frames == 2:
        return [0, skip_len - 1]
    return list(range(num_frames))


@functools.lru_cache(maxsize=16)
def _rope_table(grid: tuple[int, int, int], axes_dims: tuple[int, int, int], theta: float, skip_len: int) -> Tensor:
    f, h, w = grid
    positions = (
        torch.tensor(temporal_positions(f, skip_len)),
        torch.arange(h),
        torch.arange(w),
    )
    t_ang, h_ang, w_ang = (rope_angles(p, rope_frequencies(d, theta)) for p, d in zip(positions, axes_dims))
    angles = torch.cat(  # (f, h, w, D/2), float64
        [
            t_ang[:, None, None, :].expand(f, h, w, -1),
            h_ang[None, :, None, :].expand(f, h, w, -1),
            w_ang[None, None, :, :].expand(f, h, w, -1),
        ],
        dim=-1,
    ).flatten(0, 2)  # (L = f·h·w, D/2), tokens in (f, h, w) order
    return rope_table(angles)


def rope_3d(
    grid: tuple[int, int, int],
    axes_dims: tuple[int, int, int],
    theta: float,
    skip_len: int,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Rotation table (L, D/2) complex64 for a (frames, height, width) token grid (cached per grid)."""
    return _rope_table(tuple(grid), tuple(axes_dims), float(theta), int(skip_len)).to(device)
