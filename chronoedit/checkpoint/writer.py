"""Write safetensors files one tensor at a time, so converting a 30 GB checkpoint needs one tensor of RAM.

The header (names, dtypes, shapes, offsets) is known before any data is read, so the file is written as
header + each tensor in turn, to a temporary name renamed into place at the end (never half a file). Files
are standard safetensors (the ``safetensors`` library reads them).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from chronoedit.checkpoint.load import TensorLike, materialize
from chronoedit.checkpoint.safetensors_io import DTYPES
from chronoedit.files import atomic_path, check_free_space, write_text

_NAMES = {v: k for k, v in DTYPES.items()}


@dataclass(frozen=True)
class Pending:
    """A tensor to write: its shape and dtype now, its values when ``read()`` is called."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    read: Callable[[], Tensor]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def pending(t: TensorLike, dtype: torch.dtype | None = None, transform: Callable[[Tensor], Tensor] | None = None):
    """``t`` (on disk or in memory), optionally transformed, cast to ``dtype`` when written."""
    out_dtype = dtype or t.dtype

    def read() -> Tensor:
        x = materialize(t, None if transform is not None else out_dtype)
        if transform is not None:
            x = transform(x)
        return x.to(out_dtype)

    return Pending(tuple(t.shape), out_dtype, read)


def write_safetensors(tensors: Mapping[str, Pending], path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """Stream ``tensors`` into a safetensors file at ``path`` (atomically)."""
    path = Path(path)
    header: dict = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name, p in tensors.items():
        header[name] = {"dtype": _NAMES[p.dtype], "shape": list(p.shape), "data_offsets": [offset, offset + p.nbytes]}
        offset += p.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(8 + len(raw)) % 8)  # data section 8-byte aligned
    check_free_space(path, 8 + len(raw) + offset)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for name, p in tensors.items():
            x = p.read().detach().to("cpu").contiguous()
            if tuple(x.shape) != p.shape or x.dtype != p.dtype:
                raise ValueError(f"{name}: produced {x.dtype} {tuple(x.shape)}, announced {p.dtype} {p.shape}")
            if x.numel():
                f.write(memoryview(x.view(-1).view(torch.uint8).numpy()))
            del x
    return path


def write_sharded(
    tensors: Mapping[str, Pending], folder: str | os.PathLike, stem: str, max_shard_bytes: int = 0
) -> list[Path]:
    """One ``{stem}.safetensors``, or shards ``{stem}-0000i-of-0000n.safetensors`` of at most
    ``max_shard_bytes`` (a bigger tensor gets a shard to itself) plus ``{stem}.safetensors.index.json``, as
    diffusers and transformers write them."""
    folder = Path(folder)
    if max_shard_bytes <= 0:
        return [write_safetensors(tensors, folder / f"{stem}.safetensors", {"format": "pt"})]
    shards: list[dict[str, Pending]] = [{}]
    size = 0
    for name, p in tensors.items():
        if shards[-1] and size + p.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = p
        size += p.nbytes
    n = len(shards)
    files, weight_map = [], {}
    for i, shard in enumerate(shards, 1):
        fname = f"{stem}-{i:05d}-of-{n:05d}.safetensors"
        files.append(write_safetensors(shard, folder / fname, {"format": "pt"}))
        weight_map.update({k: fname for k in shard})
    total = sum(p.nbytes for p in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    write_text(folder / f"{stem}.safetensors.index.json", json.dumps(index, indent=2))
    return files


__all__ = ["Pending", "pending", "write_safetensors", "write_sharded"]
