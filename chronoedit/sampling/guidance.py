"""Classifier-free guidance as a closure around the model: the result is again a velocity function.

Both forms combine as diffusers' pipelines do, ``uncond + scale · (cond − uncond)``, so a run is comparable
with the reference bit for bit. At ``scale ≤ 1`` there is no unconditional pass: the result is the conditional
velocity, as the reference pipelines do (``do_classifier_free_guidance = guidance_scale > 1``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from chronoedit.sampling.state import VelocityFn


def _check_scale(scale: float) -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"guidance scale={scale!r} must be a finite number")
    return float(scale)


def classifier_free_guidance(cond_fn: VelocityFn, uncond_fn: VelocityFn, scale: float) -> VelocityFn:
    """Guided velocity from two calls per evaluation: cond first, then uncond (the reference's order)."""
    scale = _check_scale(scale)
    if scale <= 1.0:
        return cond_fn

    def guided(x: Tensor, t: Tensor) -> Tensor:
        cond = cond_fn(x, t)
        uncond = uncond_fn(x, t)
        return uncond + scale * (cond - uncond)

    return guided


def classifier_free_guidance_batched(
    model_fn: Callable[..., Tensor],
    cond_kwargs: Mapping[str, Any],
    uncond_kwargs: Mapping[str, Any],
    scale: float,
) -> VelocityFn:
    """Guided velocity from one forward on a doubled batch: ``model_fn(x2, t2, **kwargs2)`` with
    x2 = [x; x], t2 = [t; t] and every tensor kwarg = [cond; uncond] on dim 0 (concatenated once, here);
    non-tensor kwargs must be equal in both and are passed through. The output (2B, ...) splits as
    [cond; uncond]."""
    scale = _check_scale(scale)
    if set(cond_kwargs) != set(uncond_kwargs):
        raise ValueError(f"cond and uncond kwargs differ in keys: {sorted(cond_kwargs)} vs {sorted(uncond_kwargs)}")
    if scale <= 1.0:
        cond_only = dict(cond_kwargs)
        return lambda x, t: model_fn(x, t, **cond_only)
    batched: dict[str, Any] = {}
    for key, c in cond_kwargs.items():
        u = uncond_kwargs[key]
        if isinstance(c, Tensor) != isinstance(u, Tensor):
            raise ValueError(f"kwarg {key!r} is a tensor in one branch only")
        if isinstance(c, Tensor):
            if c.shape != u.shape:
                raise ValueError(f"kwarg {key!r}: cond {tuple(c.shape)} and uncond {tuple(u.shape)} differ in shape")
            batched[key] = torch.cat([c, u], dim=0)  # (2B, ...)
        elif c is not u and c != u:
            raise ValueError(f"non-tensor kwarg {key!r} differs between cond ({c!r}) and uncond ({u!r})")
        else:
            batched[key] = c

    def guided(x: Tensor, t: Tensor) -> Tensor:
        out = model_fn(torch.cat([x, x], dim=0), torch.cat([t, t], dim=0), **batched)  # (2B, C, F, H, W)
        cond, uncond = out.chunk(2, dim=0)
        return uncond + scale * (cond - uncond)

    return guided


__all__ = ["classifier_free_guidance", "classifier_free_guidance_batched"]
