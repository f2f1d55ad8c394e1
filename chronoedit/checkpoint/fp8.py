"""fp8 checkpoints (ComfyUI's "scaled" float8_e4m3fn files): dequantised on load, or kept as fp8 storage.

Key names, after the model prefix (facts from ComfyUI's loaders):

    scaled_fp8                 a marker tensor whose dtype names the fp8 type (fp32 means e4m3fn); dropped
    <layer>.scale_weight       the weight's scale, fp32, per tensor (or per output row): W = fp8 · scale
    <layer>.scale_input        an activation scale for fp8 matmuls; not needed (we compute in bf16/fp32)
    <layer>.weight_scale, .input_scale, .comfy_quant
                               the same in ComfyUI's newer per-layer format; ``comfy_quant`` (uint8 JSON, or the
                               ``_quantization_metadata`` file metadata) names the layer's format, and only the
                               float8 formats are supported

fp8 weights without any scale (plain ``float8_e4m3fn`` files) are read with scale 1.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from chronoedit.checkpoint.errors import CheckpointError, name_some
from chronoedit.checkpoint.load import TensorLike, materialize

MARKER = "scaled_fp8"
SCALE_SUFFIXES = (".scale_weight", ".weight_scale")
DROPPED_SUFFIXES = (".scale_input", ".input_scale", ".comfy_quant")
AUX_SUFFIXES = (MARKER, *SCALE_SUFFIXES, *DROPPED_SUFFIXES)  # keys that are not parameters
SUPPORTED_FORMATS = ("float8_e4m3fn", "float8_e5m2")
FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)


@dataclass
class Fp8Parts:
    """A checkpoint's parameters with the fp8 bookkeeping taken out."""

    params: dict[str, TensorLike]  # every parameter, fp8 or not
    scales: dict[str, TensorLike] = field(default_factory=dict)  # "<layer>.weight" -> its scale

    def scale_of(self, name: str) -> Tensor | None:
        s = self.scales.get(name)
        return None if s is None else materialize(s, torch.float32)


def _check_formats(layers: Mapping[str, object], what: str) -> None:
    bad = []
    for layer, conf in layers.items():
        fmt = conf.get("format") if isinstance(conf, Mapping) else conf
        if fmt not in SUPPORTED_FORMATS:
            bad.append(f"{layer} ({fmt})")
    if bad:
        raise CheckpointError(f"{what}: unsupported quantisation formats (only {SUPPORTED_FORMATS}): {name_some(bad)}")


def split_fp8(
    tensors: Mapping[str, TensorLike], metadata: Mapping[str, str] | None = None, what: str = "checkpoint"
) -> Fp8Parts:
    """Separate parameters from scales, markers and input scales; check that each scale has its fp8 weight."""
    parts = Fp8Parts(params={})
    if metadata and metadata.get("_quantization_metadata"):
        try:
            layers = json.loads(metadata["_quantization_metadata"]).get("layers", {})
        except (json.JSONDecodeError, AttributeError) as e:
            raise CheckpointError(f"{what}: corrupt _quantization_metadata ({e})") from e
        _check_formats(layers, what)
    for key, t in tensors.items():
        if key == MARKER:
            if t.dtype not in (*FP8_DTYPES, torch.float32):
                raise CheckpointError(f"{what}: the {MARKER} marker names dtype {t.dtype}, not an fp8 type")
            continue
        if key.endswith(".comfy_quant"):
            try:
                conf = json.loads(bytes(materialize(t).to(torch.uint8).tolist()).decode())
            except (ValueError, UnicodeDecodeError) as e:
                raise CheckpointError(f"{what}: {key} is not a JSON layer description ({e})") from e
            _check_formats({key.removesuffix(".comfy_quant"): conf}, what)
            continue
        if key.endswith(DROPPED_SUFFIXES):
            continue
        scale_suffix = next((s for s in SCALE_SUFFIXES if key.endswith(s)), None)
        if scale_suffix is not None:
            parts.scales[key.removesuffix(scale_suffix) + ".weight"] = t
        else:
            parts.params[key] = t
    orphans = [k for k in parts.scales if k not in parts.params]
    if orphans:
        raise CheckpointError(f"{what}: scales without their weight: {name_some(orphans)}")
    misfit = []
    for k, s in parts.scales.items():
        w = parts.params[k]
        if w.dtype not in FP8_DTYPES:
            misfit.append(f"{k} is {w.dtype}, not fp8")
        elif len(s.shape) > len(w.shape) or any(a not in (1, b) for a, b in zip(reversed(s.shape), w.shape[::-1])):
            misfit.append(f"{k} scale {tuple(s.shape)} vs weight {tuple(w.shape)}")
    if misfit:
        raise CheckpointError(f"{what}: scales that do not fit their weight: {name_some(misfit, 6)}")
    return parts


def _broadcastable(scale: Tensor, weight: Tensor) -> Tensor:
    """A per-row scale stored as (out,) is applied along dim 0."""
    if scale.ndim == 1 and scale.numel() > 1:
        return scale.view(-1, *([1] * (weight.ndim - 1)))
    return scale


def dequantize(weight: Tensor, scale: Tensor | None) -> Tensor:
    """``weight · scale`` in fp32 (scale None: just the fp32 value)."""
    w = weight.to(torch.float32)
    return w if scale is None else w * _broadcastable(scale.to(torch.float32), w)


def dequantizer(parts: Fp8Parts, kept: Iterable[str] = ()):
    """``convert(name, tensor)`` for :func:`~chronoedit.checkpoint.load.load_into`: each fp8 weight × its scale,
    but for the names in ``kept`` (layers that stay fp8 in memory)."""
    kept = set(kept)

    def convert(name: str, t: Tensor) -> Tensor:
        return dequantize(t, parts.scale_of(name)) if t.dtype in FP8_DTYPES and name not in kept else t

    return convert


def quantize(weight: Tensor, dtype: torch.dtype = torch.float8_e4m3fn) -> tuple[Tensor, Tensor]:
    """(fp8 weight, fp32 per-tensor scale) with ``amax`` mapped to the fp8 maximum (as ComfyUI's tools do)."""
    amax = weight.detach().abs().max().float().clamp_min(1e-12)
    scale = amax / torch.finfo(dtype).max
    return (weight.float() / scale).to(dtype), scale


class FP8Linear(nn.Module):
    """A linear layer whose weight stays fp8 in memory (``weight`` fp8, ``scale_weight`` fp32); each call
    dequantises it (in fp32, then the input's dtype) — half the memory of bf16 at the cost of one cast per call.

    Not an ``nn.Linear``: LoRA adapters and fusing refuse it (fusing into fp8 would need requantising).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool, dtype: torch.dtype, device=None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=dtype, device=device), False)
        self.bias = nn.Parameter(torch.empty(out_features, device=device)) if bias else None
        self.register_buffer("scale_weight", torch.ones((), device=device))

    def forward(self, x: Tensor) -> Tensor:
        w = dequantize(self.weight, self.scale_weight).to(x.dtype)  # (out, in)
        return nn.functional.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, weight={self.weight.dtype}"


def keep_fp8(model: nn.Module, layers: Iterable[str], parts: Fp8Parts) -> list[str]:
    """Swap the ``nn.Linear`` modules ``layers`` of a ``meta`` model for :class:`FP8Linear` (the weight's stored
    fp8 dtype, the scale's shape), and add their scales to ``parts.params`` as ``<layer>.scale_weight``."""
    swapped = []
    for name in layers:
        lin = model.get_submodule(name)
        if not isinstance(lin, nn.Linear):
            raise TypeError(f"{name} is {type(lin).__name__}, not nn.Linear")
        w = parts.params[f"{name}.weight"]
        with torch.device("meta"):
            new = FP8Linear(lin.in_features, lin.out_features, lin.bias is not None, w.dtype)
        if lin.bias is not None:
            new.bias = nn.Parameter(torch.empty_like(lin.bias))  # keeps the dtype cast_params gave the bias
        scale = parts.scales.get(f"{name}.weight")
        new.scale_weight = torch.empty(tuple(scale.shape) if scale is not None else (), device="meta")
        parts.params[f"{name}.scale_weight"] = scale if scale is not None else torch.ones(())
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, new)
        swapped.append(name)
    return swapped


__all__ = [
    "AUX_SUFFIXES", "FP8Linear", "Fp8Parts", "dequantize", "dequantizer", "keep_fp8", "quantize", "split_fp8",
]  # fmt: skip
