"""Strict, lean loading: build the model on ``meta``, read each tensor once, cast it, assign it.

Peak RAM is the loaded model plus one tensor. Every missing, unexpected and misshaped key is named in a
single :class:`CheckpointError` before any tensor is read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from chronoedit.checkpoint.errors import CheckpointError, name_some
from chronoedit.checkpoint.safetensors_io import SafetensorsFile, TensorInfo, read_tensor, scratch_buffer


@dataclass(frozen=True)
class Derived:
    """A tensor computed on read from another lazily readable one (a third of a fused q/k/v projection, a
    reshape): ``shape`` is known up front, so key and shape checks need no read."""

    source: TensorInfo | Tensor | Derived
    shape: tuple[int, ...]
    fn: Callable[[Tensor], Tensor]

    @property
    def dtype(self) -> torch.dtype:
        return self.source.dtype


@dataclass(frozen=True)
class LazyTensor:
    """A tensor that a reader produces on demand (e.g. a GGUF tensor, dequantised when read)."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    read: Callable[[], Tensor]


# A lazily readable tensor: a TensorInfo (read from disk on demand), a Derived or LazyTensor, or one in memory.
TensorLike = TensorInfo | Derived | LazyTensor | Tensor


def rows(t: TensorLike, start: int, stop: int) -> Derived:
    """Rows ``[start, stop)`` of ``t`` (e.g. q, k or v of a fused in-projection), read lazily."""
    return Derived(t, (stop - start, *tuple(t.shape)[1:]), lambda x: x[start:stop].clone())


def reshaped(t: TensorLike, shape: tuple[int, ...]) -> Derived:
    """``t`` read lazily in ``shape`` (same number of elements)."""
    return Derived(t, tuple(shape), lambda x: x.reshape(shape))


def open_safetensors(path: str | os.PathLike) -> dict[str, TensorInfo]:
    """Index the tensors of a ``.safetensors`` file or of a folder (sharded with ``*.safetensors.index.json``,
    or holding exactly one ``.safetensors`` file). Reads headers only."""
    path = Path(path)
    if path.is_file():
        return dict(SafetensorsFile(path))
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint file or folder")
    indexes = sorted(path.glob("*.safetensors.index.json"))
    if len(indexes) > 1:
        raise CheckpointError(f"{path}: several shard indexes ({', '.join(p.name for p in indexes)})")
    if indexes:
        try:
            weight_map: dict[str, str] = json.loads(indexes[0].read_text())["weight_map"]
        except (OSError, KeyError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{indexes[0]}: corrupt shard index ({e})") from e
        missing = sorted({s for s in weight_map.values() if not (path / s).is_file()})
        if missing:
            raise CheckpointError(f"{indexes[0]}: shard files missing: {', '.join(missing)}")
        shards = {s: SafetensorsFile(path / s) for s in sorted(set(weight_map.values()))}
        out = {}
        absent = []
        for key, shard in weight_map.items():
            if key not in shards[shard]:
                absent.append(key)
            else:
                out[key] = shards[shard][key]
        if absent:
            raise CheckpointError(f"{indexes[0]}: keys listed but not in their shard: {name_some(absent)}")
        return out
    files = sorted(path.glob("*.safetensors"))
    if len(files) != 1:
        raise CheckpointError(
            f"{path}: expected one .safetensors file or a *.safetensors.index.json, found {len(files)} files"
        )
    return dict(SafetensorsFile(files[0]))


def materialize(t: TensorLike, dtype: torch.dtype | None = None, scratch: Tensor | None = None) -> Tensor:
    """The tensor itself: read from disk if needed, cast to ``dtype`` (chunk by chunk when reading)."""
    if isinstance(t, TensorInfo):
        return read_tensor(t, dtype, scratch)
    if isinstance(t, (Derived, LazyTensor)):
        out = t.fn(materialize(t.source)) if isinstance(t, Derived) else t.read()
        return out if dtype is None else out.to(dtype)
    return t if dtype is None else t.to(dtype)


def shape_of(t: TensorLike) -> tuple[int, ...]:
    return tuple(t.shape)


def check_keys(model: nn.Module | Mapping[str, Any], tensors: Mapping[str, TensorLike], what: str) -> None:
    """One CheckpointError naming every missing, unexpected and misshaped key (nothing is read). ``model``: a
    module (its state dict is expected) or a mapping of the expected names to tensors / anything with a shape."""
    expected = model.state_dict(keep_vars=True) if isinstance(model, nn.Module) else model
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    misshaped = [
        f"{k} {shape_of(tensors[k])} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in tensors and shape_of(tensors[k]) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing: {name_some(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: {name_some(unexpected)}")
    if misshaped:
        problems.append(f"{len(misshaped)} misshaped: {name_some(misshaped, 6)}")
    if problems:
        raise CheckpointError(f"{what}: state dict does not fit the model — " + "; ".join(problems))


def load_into(
    model: nn.Module,
    tensors: Mapping[str, TensorLike],
    *,
    what: str = "checkpoint",
    convert: Callable[[str, Tensor], Tensor] | None = None,
    device: torch.device | str = "cpu",
) -> nn.Module:
    """Load ``tensors`` (our names) into ``model`` (on ``meta`` or real), strictly, one tensor at a time.

    Each tensor is read, optionally transformed by ``convert(name, tensor)`` (e.g. fp8 dequantisation),
    cast to the dtype the model's parameter has, moved to ``device`` and assigned.
    """
    check_keys(model, tensors, what)
    targets = model.state_dict(keep_vars=True)
    loaded: dict[str, Tensor] = {}
    scratch = scratch_buffer()
    for key, ref in targets.items():
        src = tensors[key]
        # cast while reading unless a conversion needs the stored values (e.g. fp8 with scales)
        t = materialize(src, None if convert is not None or not ref.is_floating_point() else ref.dtype, scratch)
        if convert is not None:
            t = convert(key, t)
        if ref.is_floating_point():
            t = t.to(ref.dtype)
        loaded[key] = t.to(device)
        del t
    model.load_state_dict(loaded, strict=True, assign=True)
    leftover = [n for n, b in model.named_buffers() if b.is_meta]
    if leftover:
        raise CheckpointError(f"{what}: buffers left on the meta device after loading: {name_some(leftover)}")
    return model
