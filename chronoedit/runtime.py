"""How a model runs, as opposed to what it is: device, dtype, attention kernel, compile, offload, VAE tiling.

One :class:`RuntimeConfig` (the ``runtime.*`` keys) serves inference, training and pre-encoding. Nothing here
changes a weight, and none of it is ever written into a checkpoint's config.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from chronoedit.models.vae.tiling import VAETiling

# The dtypes a config may name; the one table the project reads names from.
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class RuntimeConfig:
    device: str = "auto"  # auto = cuda if available, else cpu
    dtype: str = "auto"  # DiT/UMT5/VAE weights at inference: auto = bfloat16 on cuda, float32 on cpu
    attention: str = "sdpa"  # a key of chronoedit.ops.ATTENTION_BACKENDS (DiT and CLIP)
    compile: bool = False  # torch.compile each DiT block
    offload: bool = False  # inference: models live on the CPU and visit the device only for their stage
    cfg_batched: bool = False  # inference: conditional + unconditional DiT passes as one doubled batch
    context_cache: bool = True  # inference: every prompt's cross-attention K/V and the RoPE table once per edit (exact)
    # inference, approximate: skip whole DiT forwards by reusing the last block-stack residual
    # (chronoedit/sampling/step_cache.py). none | magcache; magcache needs a calibration file.
    step_cache: str = "none"
    step_cache_threshold: float = 0.12  # magcache: accumulated error allowed before a forward is recomputed
    step_cache_max_skips: int = 2  # magcache: K, the most consecutive steps skipped
    step_cache_retention: float = 0.2  # magcache: this fraction of the first steps is never skipped
    step_cache_calibration: str | None = None  # magcache: JSON of tools/calibrate_step_cache.py (required)
    vae: VAETiling = field(default_factory=VAETiling)

    def __post_init__(self) -> None:
        from chronoedit.ops.attention import ATTENTION_BACKENDS

        if self.attention not in ATTENTION_BACKENDS:
            raise ValueError(f"runtime.attention={self.attention!r} is not one of {sorted(ATTENTION_BACKENDS)}")
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ValueError(f"runtime.dtype={self.dtype!r} is not one of {['auto', *DTYPES]}")
        self._check_step_cache()

    def _check_step_cache(self) -> None:
        from chronoedit.sampling.step_cache import STEP_CACHE_METHODS, check_magcache_knobs

        if self.step_cache not in STEP_CACHE_METHODS:
            raise ValueError(f"runtime.step_cache={self.step_cache!r} is not one of {list(STEP_CACHE_METHODS)}")
        check_magcache_knobs(self.step_cache_threshold, self.step_cache_max_skips, self.step_cache_retention,
                             prefix="runtime.step_cache_")  # fmt: skip
        if self.step_cache == "magcache" and not self.step_cache_calibration:
            raise ValueError(
                "runtime.step_cache=magcache needs runtime.step_cache_calibration=<json> "
                "(make one with: python tools/calibrate_step_cache.py checkpoint=... --out calib.json)"
            )


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name} but CUDA is not available")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ValueError(f"dtype={name!r} is not one of {['auto', *DTYPES]}")
    return DTYPES[name]


__all__ = ["DTYPES", "RuntimeConfig", "VAETiling", "resolve_device", "resolve_dtype"]
