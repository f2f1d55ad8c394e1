"""A lean safetensors reader: header parsed once, each tensor read on demand with one positioned read.

Reading per tensor (instead of mapping whole shards) keeps peak RAM at the loaded model plus the largest
single tensor, and lets a truncated or corrupt file be named before anything is loaded.

The header is validated here in full before any tensor is allocated (a file's header is untrusted input): its
8-byte length is bounded by the file size and :data:`MAX_HEADER`; it must be a JSON object without duplicate
keys; every entry needs a known dtype, a shape of non-negative integers and ``[begin, end)`` data offsets that lie
inside the file, span exactly ``prod(shape) · itemsize`` bytes and overlap no other tensor. So no read allocates
more than the file holds, and every lie is one :class:`CheckpointError` naming the file.
"""

from __future__ import annotations

import itertools
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
from chronoedit.files import atomic_path, check_free_space

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
    "U64": torch.uint64,
    "U32": torch.uint32,
    "U16": torch.uint16,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
MAX_HEADER = 100 * 1024 * 1024  # the safetensors library's own limit
_MAX_ELEMENTS = 1 << 62  # a shape whose product is larger overflows torch's int64 sizes
# What other formats start with, so that handing one of them to the safetensors reader says what it is.
_MAGICS = {
    b"GGUF": "a GGUF file (llama.cpp / ComfyUI-GGUF quantisation), which is not supported: use a safetensors file",
    b"PK\x03\x04": "a PyTorch (zip) pickle, not a safetensors file: rename it to .pth",
}


@dataclass(frozen=True)
class TensorInfo:
    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    nbytes: int


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _is_count(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def read_header(path: Path) -> tuple[int, dict]:
    """(header length, parsed header) of a safetensors file, with the length and the JSON checked."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            for magic, what in _MAGICS.items():
                if head.startswith(magic):
                    raise CheckpointError(f"{path}: {what}")
            if len(head) < 8:
                raise CheckpointError(f"{path}: not a safetensors file (shorter than its 8-byte header size)")
            (n,) = struct.unpack("<Q", head)
            if n < 2 or n > MAX_HEADER or 8 + n > size:
                what = "truncated" if n <= MAX_HEADER and 8 + n > size else "corrupt"
                raise CheckpointError(
                    f"{path}: {what} safetensors header ({n} bytes claimed, the file has {size}, at most {MAX_HEADER})"
                )
            raw = f.read(n)
        if len(raw) != n:
            raise CheckpointError(f"{path}: truncated safetensors header ({len(raw)} of {n} bytes)")
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read safetensors header ({e.strerror or e})") from e
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: cannot read safetensors header (JSON, char {e.pos}: {e.msg})") from e
    except (ValueError, RecursionError) as e:  # not UTF-8, a duplicate key, absurd nesting
        raise CheckpointError(f"{path}: cannot read safetensors header ({type(e).__name__}: {e})") from e
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (a JSON {type(header).__name__}, not an object)")
    return n, header


def _entry(path: Path, key: str, h: object, data_size: int) -> tuple[torch.dtype, tuple[int, ...], int, int]:
    """(dtype, shape, begin, end) of one header entry, each checked."""
    if not isinstance(h, dict) or set(h) != {"dtype", "shape", "data_offsets"}:
        raise CheckpointError(
            f"{path}: corrupt header entry for {key!r} (needs dtype, shape, data_offsets): {h!r:.200}"
        )
    name, shape, offsets = h["dtype"], h["shape"], h["data_offsets"]
    if not isinstance(name, str) or name not in DTYPES:
        raise CheckpointError(f"{path}: tensor {key!r} has an unknown dtype {name!r:.40} (known: {', '.join(DTYPES)})")
    if not isinstance(shape, list) or len(shape) > 64 or not all(_is_count(s) for s in shape):
        raise CheckpointError(f"{path}: tensor {key!r} has an invalid shape {shape!r:.200}")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets):
        raise CheckpointError(f"{path}: tensor {key!r} has invalid data_offsets {offsets!r:.200}")
    begin, end = offsets
    dtype = DTYPES[name]
    if math.prod(max(s, 1) for s in shape) > _MAX_ELEMENTS:
        raise CheckpointError(f"{path}: tensor {key!r} has a shape {shape} whose size overflows")
    nbytes = math.prod(shape) * dtype.itemsize
    if end > data_size:
        raise CheckpointError(
            f"{path}: truncated file: tensor {key!r} needs bytes [{begin}, {end}) of the data section, "
            f"the file holds {data_size}"
        )
    if end < begin or end - begin != nbytes:
        raise CheckpointError(
            f"{path}: corrupt file: tensor {key!r} {name} {shape} needs {nbytes} bytes, "
            f"its data_offsets [{begin}, {end}) span {end - begin}"
        )
    return dtype, tuple(shape), begin, end


class SafetensorsFile(Mapping[str, TensorInfo]):
    """The tensors of one ``.safetensors`` file, validated against the file's size on open."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        n, header = read_header(self.path)
        data_size = self.path.stat().st_size - 8 - n
        metadata = header.pop("__metadata__", None) or {}
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise CheckpointError(f"{self.path}: corrupt safetensors __metadata__ (must map strings to strings)")
        self.metadata: dict[str, str] = metadata
        self._infos: dict[str, TensorInfo] = {}
        spans = []
        for key, h in header.items():
            dtype, shape, begin, end = _entry(self.path, key, h, data_size)
            if end > begin:
                spans.append((begin, end, key))
            self._infos[key] = TensorInfo(self.path, dtype, shape, 8 + n + begin, end - begin)
        spans.sort()
        for (_, end_a, a), (begin_b, _, b) in itertools.pairwise(spans):
            if begin_b < end_a:
                raise CheckpointError(f"{self.path}: corrupt file: tensors {a!r} and {b!r} overlap in the data section")

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
    """A reusable byte buffer for :func:`read_tensor` (one per load: per-tensor scratch fragments the heap). It
    starts empty and grows to what the largest cast needs (at most 64 MiB), so a small file never costs more."""
    return torch.empty(0, dtype=torch.uint8)


def read_tensor(info: TensorInfo, dtype: torch.dtype | None = None, scratch: Tensor | None = None) -> Tensor:
    """Read one tensor from disk into a fresh CPU tensor, optionally cast to ``dtype`` on the way.

    Casting reads at most 64 MiB of the stored dtype at a time (into ``scratch``, a :func:`scratch_buffer`, if
    given), so a 4 GB fp32 embedding becomes a 2 GB bf16 tensor without ever holding the 4 GB. Nothing larger than
    the tensor's bytes in the file (validated when the header was read) is allocated.
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
        need = min(step, flat.numel()) * info.dtype.itemsize
        if scratch is None:
            scratch = torch.empty(need, dtype=torch.uint8)
        elif scratch.numel() < need:  # the caller's buffer grows (a new storage, kept for the next tensors too)
            scratch.set_(torch.empty(need, dtype=torch.uint8).untyped_storage())
        for lo in range(0, flat.numel(), step):
            n = min(step, flat.numel() - lo)
            piece = scratch[: n * info.dtype.itemsize].view(info.dtype)
            _read_into(f, info.start + lo * info.dtype.itemsize, piece, info.file)
            flat[lo : lo + piece.numel()].copy_(piece)
    return out


def save_file(tensors: Mapping[str, Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """Write tensors with the safetensors library, atomically (:func:`chronoedit.files.atomic_path`): never half a
    file under ``path``; first checks that the file system has room for them."""
    from safetensors.torch import save_file as _save

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    check_free_space(path, sum(t.numel() * t.element_size() for t in tensors.values()))
    with atomic_path(path) as tmp:
        _save(tensors, str(tmp), metadata=metadata)
