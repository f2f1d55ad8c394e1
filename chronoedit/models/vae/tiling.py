"""Spatial tiling: run a video-to-video function on overlapping tiles and blend them (linear ramps).

Memory is that of one tile plus the output; the result differs from the untiled one near tile seams, since
each tile sees zero padding where its neighbours would have been (the tests bound the difference).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class VAETiling:
    """Execution of the VAE: blended spatial tiles (approximate; memory ∝ tile) or exact row strips."""

    tile: bool = False  # encode/decode in overlapping spatial tiles for frames larger than a tile
    tile_size: int = 256  # tile height and width, in video pixels
    tile_overlap: int = 64  # pixels shared by neighbouring tiles, blended linearly
    strip_rows: int = 128  # untiled decode: rows per exact strip at full resolution (0 = whole frames)

    def check(self, spatial_factor: int) -> None:
        s, problems = spatial_factor, []
        if self.tile_size <= 0 or self.tile_size % s:
            problems.append(f"tile_size={self.tile_size} must be a positive multiple of {s}")
        if self.tile_overlap < 0 or self.tile_overlap % s or 2 * self.tile_overlap > self.tile_size:
            problems.append(f"tile_overlap={self.tile_overlap} must be a multiple of {s} in [0, tile_size / 2]")
        if self.strip_rows < 0 or self.strip_rows % s:
            problems.append(f"strip_rows={self.strip_rows} must be 0 or a positive multiple of {s}")
        if problems:
            raise ValueError("invalid runtime.vae: " + "; ".join(problems))


def tile_grid(size: int, tile: int, overlap: int) -> tuple[list[int], int]:
    """The fewest tiles of one length ≤ ``tile`` that cover [0, size) with neighbours sharing ≥ ``overlap``,
    spread evenly: (starts, length). Equal lengths keep the extra compute at (n − 1) × overlap."""
    if size <= tile:
        return [0], size
    n = math.ceil((size - overlap) / (tile - overlap))
    length = math.ceil((size + (n - 1) * overlap) / n)
    while True:  # rounding the starts may shave one sample off an overlap: lengthen (at worst up to `tile`)
        starts = [round(i * (size - length) / (n - 1)) for i in range(n)]
        if length == tile or all(b - a <= length - overlap for a, b in itertools.pairwise(starts)):
            return starts, length
        length += 1


def ramp(start: int, end: int, size: int, width: int) -> Tensor:
    """Blend weights (end − start,) of a tile covering [start, end) of [0, size): rising linearly over ``width``
    samples from each inner edge, 1 inside and at the frame's own edges."""
    x = torch.arange(start, end, dtype=torch.float32) + 0.5
    w = torch.ones(end - start)
    if width > 0:
        if start > 0:
            w = torch.minimum(w, (x - start) / width)
        if end < size:
            w = torch.minimum(w, (end - x) / width)
    return w


def tiled(fn: Callable[[Tensor], Tensor], x: Tensor, tile: int, overlap: int, in_scale: int, out_scale: int) -> Tensor:
    """Apply ``fn`` (B, C, F, H, W) -> (B, C', F', H', W') tile by tile and blend.

    The grid is laid out in latent pixels: a tile is ``tile`` latent pixels wide with ``overlap`` shared, i.e.
    ``tile · in_scale`` pixels of ``x`` (8 for the encoder's video, 1 for the decoder's latents) and
    ``tile · out_scale`` pixels of the output.
    """
    h, w = x.shape[3] // in_scale, x.shape[4] // in_scale
    (rows, th), (cols, tw) = tile_grid(h, tile, overlap), tile_grid(w, tile, overlap)
    out: Tensor | None = None
    weight_sum = torch.zeros(h * out_scale, w * out_scale)
    for y0 in rows:
        for x0 in cols:
            y1, x1 = y0 + th, x0 + tw
            part = fn(x[:, :, :, y0 * in_scale : y1 * in_scale, x0 * in_scale : x1 * in_scale])
            if out is None:
                out = part.new_zeros((*part.shape[:3], h * out_scale, w * out_scale))
            ys, xs = slice(y0 * out_scale, y1 * out_scale), slice(x0 * out_scale, x1 * out_scale)
            wy = ramp(ys.start, ys.stop, h * out_scale, overlap * out_scale)
            wx = ramp(xs.start, xs.stop, w * out_scale, overlap * out_scale)
            weight = wy[:, None] * wx[None, :]  # (h_tile, w_tile)
            out[:, :, :, ys, xs] += part * weight.to(part.dtype)
            weight_sum[ys, xs] += weight
            del part
    return out.div_(weight_sum.to(out.dtype))


__all__ = ["ramp", "tile_grid", "tiled"]
