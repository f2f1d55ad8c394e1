"""How a chunk of frames runs through a list of causal layers: depth first, one frame at a time, and (for the
decoder's full-resolution stages) in exact row strips.

Every layer maps ``(x (B, C, T, H, W), cache) -> (B, C', T', H', W')``; only the temporal resamplers change T.
Both schedules compute exactly what running each layer on the whole clip would (up to float rounding): the
convolutions are causal in time and see their past through the cache, and the strips carry enough halo rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from chronoedit.models.vae.cache import CausalCache
from chronoedit.models.vae.layers import Upsample


def run_depth_first(layers: Sequence[nn.Module], x: Tensor, cache: CausalCache) -> list[Tensor]:
    """Run ``x`` (B, C, T, H, W) through ``layers`` frame by frame: frame t leaves the last layer before frame
    t + 1 enters the first, so only single frames plus the cached tails are alive. A temporal resampler may
    turn a frame into none (its window is still open) or two; each goes on alone. Returns the output pieces
    in temporal order (none if no frame came out)."""
    out: list[Tensor] = []
    _run(layers, 0, x, cache, out)
    return out


def _run(layers: Sequence[nn.Module], start: int, x: Tensor, cache: CausalCache, out: list[Tensor]) -> None:
    for i in range(start, len(layers)):
        if x.shape[2] == 0:
            return
        if x.shape[2] > 1:
            for frame in x.split(1, dim=2):  # (B, C, 1, H, W) views
                _run(layers, i, frame, cache, out)
            return
        x = layers[i](x, cache)
    if x.shape[2]:
        out.append(x)


def run_layer_by_layer(layers: Sequence[nn.Module], x: Tensor, cache: CausalCache) -> Tensor:
    """The reference schedule: each layer on all frames of ``x`` at once (memory ∝ clip length; for tests)."""
    for layer in layers:
        x = layer(x, cache)
    return x


def strip_halos(layers: Sequence[nn.Module]) -> list[int]:
    """halos[i]: rows beyond a strip that layer i's input needs so that the last output is exact on the strip.

    Only layers that are local in space and keep the frame count may run in strips (they define ``input_halo``).
    """
    halos = [0] * (len(layers) + 1)
    for i in reversed(range(len(layers))):
        if not hasattr(layers[i], "input_halo"):
            raise ValueError(f"{type(layers[i]).__name__} cannot run in row strips (it is not local in space)")
        halos[i] = layers[i].input_halo(halos[i + 1])
    return halos


def run_in_strips(layers: Sequence[nn.Module], frames: Sequence[Tensor], strip: int) -> Tensor:
    """Run single frames (B, C, 1, H, W) through spatial ``layers`` in row strips of ``strip`` input rows, each
    strip streamed over all frames with its own cache, and return (B, C_out, F, H·s, W·s) (s: the layers'
    spatial scale). Each strip is computed with the halo rows it needs, cropped layer by layer, so the result
    equals the unstripped one while only a strip's activations and tails are ever alive."""
    halos = strip_halos(layers)
    scales = [2 if isinstance(layer, Upsample) else 1 for layer in layers]
    total = math.prod(scales)
    b, _, _, h, w = frames[0].shape
    out: Tensor | None = None
    for r0 in range(0, h, strip):
        r1 = min(r0 + strip, h)
        cache = CausalCache()
        for t, frame in enumerate(frames):
            top, bottom = min(halos[0], r0), min(halos[0], h - r1)  # halo rows above / below (none at edges)
            x = frame[:, :, :, r0 - top : r1 + bottom]  # (B, C, 1, top + rows + bottom, W)
            for layer, scale, keep in zip(layers, scales, halos[1:]):
                x = layer(x, cache)
                top, bottom = top * scale, bottom * scale
                cut_top, cut_bottom = top - min(top, keep), bottom - min(bottom, keep)
                if cut_top or cut_bottom:
                    x = x[:, :, :, cut_top : x.shape[3] - cut_bottom]
                    top, bottom = top - cut_top, bottom - cut_bottom
            if out is None:
                out = x.new_empty((b, x.shape[1], len(frames), h * total, w * total))
            out[:, :, t : t + 1, r0 * total : r1 * total] = x
            del x
    return out


__all__ = ["run_depth_first", "run_in_strips", "run_layer_by_layer", "strip_halos"]
