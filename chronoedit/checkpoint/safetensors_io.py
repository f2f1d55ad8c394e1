"""A lean safetensors reader: header parsed once, each tensor read on demand with one positioned read.

Reading per tensor (instead of mapping whole shards) keeps peak RAM at the loaded model plus the largest
single tensor, and lets a truncated or corrupt file be named before anything is loaded.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from chronoedit.checkpoint.errors import CheckpointError

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    nbytes: int


class SafetensorsFile(Mapping[str, TensorInfo]):
    """The tensors of one ``.safetensors`` file, validated against the file's size on open."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as f:
                head = f.read(8)
                if len(head) < 8:
                    raise CheckpointError(f"{self.path}: not a safetensors file (shorter than its 8-byte header size)")
                (n,) = struct.unpack("<Q", head)
                if n > _MAX_HEADER or 8 + n > size:
                    raise CheckpointError(f"{self.path}: corrupt or truncated safetensors header ({n} bytes claimed)")
                header = json.loads(f.read(n))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{self.path}: cannot read safetensors header ({e})") from e
        self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
        self._infos: dict[str, TensorInfo] = {}
        for key, h in header.items():
            try:
                dtype = DTYPES[h["dtype"]]
                shape = tuple(int(s) for s in h["shape"])
                begin, end = (int(o) for o in h["data_offsets"])
            except (KeyError, TypeError, ValueError) as e:
                raise CheckpointError(f"{self.path}: corrupt header entry for {key!r}: {h}") from e
            nbytes = math.prod(shape) * dtype.itemsize
            if end - begin != nbytes or 8 + n + end > size:
                what = "truncated" if 8 + n + end > size else "corrupt"
                raise CheckpointError(
                    f"{self.path}: {what} file: tensor {key!r} needs bytes [{begin}, {end}) of the data section, "
                    f"the file holds {size - 8 - n}"
                )
            self._infos[key] = TensorInfo(self.path, dtype, shape, 8 + n + begin, nbytes)

    def __getitem__(self, key: str) -> TensorInfo:
        return self._infos[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._infos)

    def __len__(self) -> int:
        return len(self._infos)


_CHUNK_BYTES = 64 * 1024 * 1024  # scratch size when casting while reading


def _read_into(f, start: int, buf: Tensor, path: Path) -> None:
    view = memoryview(buf.view(-1).view(torch.uint8).numpy()).cast("B")
    f.seek(start)
    got = f.readinto(view)
    if got != view.nbytes:
        raise CheckpointError(f"{path}: truncated while reading a tensor ({got} of {view.nbytes} bytes)")


def scratch_buffer() -> Tensor:
    """A reusable byte buffer for :func:`read_tensor` (one per load: per-tensor scratch fragments the heap)."""
    return torch.empty(_CHUNK_BYTES, dtype=torch.uint8)


def read_tensor(info: TensorInfo, dtype: torch.dtype | None = None, scratch: Tensor | None = None) -> Tensor:
    """Read one tensor from disk into a fresh CPU tensor, optionally cast to ``dtype`` on the way.

    Casting reads at most 64 MiB of the stored dtype at a time (into ``scratch``, a :func:`scratch_buffer`, if
    given), so a 4 GB fp32 embedding becomes a 2 GB bf16 tensor without ever holding the 4 GB.
    """
    dtype = dtype or info.dtype
    out = torch.empty(info.shape, dtype=dtype)
    if info.nbytes == 0:
        return out
    with open(info.file, "rb") as f:
        if dtype == info.dtype:
            _read_into(f, info.start, out, info.file)
            return out
        flat = out.view(-1)
        step = max(1, _CHUNK_BYTES // info.dtype.itemsize)
        if scratch is None:
            scratch = torch.empty(min(step, flat.numel()) * info.dtype.itemsize, dtype=torch.uint8)
        for lo in range(0, flat.numel(), step):
            n = min(step, flat.numel() - lo)
            piece = scratch[: n * info.dtype.itemsize].view(info.dtype)
            _read_into(f, info.start + lo * info.dtype.itemsize, piece, info.file)
            flat[lo : lo + piece.numel()].copy_(piece)
    return out


def save_file(tensors: Mapping[str, Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """Write tensors with the safetensors library, atomically (temp file + rename); never half a file."""
    from safetensors.torch import save_file as _save

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    _save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)
