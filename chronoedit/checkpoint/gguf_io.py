"""GGUF files (llama.cpp / ComfyUI-GGUF quantisations, e.g. QuantStack's ChronoEdit-14B DiTs), read through the
optional ``gguf`` package (``pip install 'chronoedit[gguf]'``) and dequantised on load, one tensor at a time.

The header is parsed (memory-mapped) before anything is dequantised: a quantisation type outside
:data:`SUPPORTED` is refused in one line naming the file and the tensors. Shapes: GGUF stores dimensions in ggml
order (fastest first), reversed here to PyTorch's; tensors of more than 4 dims (the DiT's Conv3d patch
embedding) are stored flattened with their shape in the ``comfy.gguf.orig_shape.<name>`` field, as ComfyUI-GGUF's
converter writes it. Weights come back in fp32 (f16 / bf16 tensors as stored), then take the model's dtype.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from chronoedit.checkpoint.errors import CheckpointError, name_some
from chronoedit.checkpoint.load import LazyTensor

ORIG_SHAPE = "comfy.gguf.orig_shape."
# types the gguf package dequantises with numpy: float, the legacy block quants and the K-quants
SUPPORTED = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
_STORED = {"F16": torch.float16, "BF16": torch.bfloat16}  # read back as stored; everything else as fp32


def _gguf(path: Path):
    try:
        import gguf
    except ImportError:
        raise CheckpointError(
            f"{path}: reading GGUF files needs the gguf package (pip install 'chronoedit[gguf]')"
        ) from None
    return gguf


def open_gguf(path: str | os.PathLike) -> dict[str, LazyTensor]:
    """The tensors of a GGUF file, each a :class:`LazyTensor` dequantised when read (header only here)."""
    path = Path(path)
    gguf = _gguf(path)
    try:
        reader = gguf.GGUFReader(str(path), "r")
    except Exception as e:  # a hostile or truncated header: whatever the parser raises, one line
        raise CheckpointError(f"{path}: not readable as GGUF files are laid out ({type(e).__name__}: {e})") from None
    if not reader.tensors:
        raise CheckpointError(f"{path}: no tensors in it (truncated? GGUF files list every tensor in their header)")
    orig = {
        name[len(ORIG_SHAPE) :]: tuple(int(x) for x in field.contents())
        for name, field in reader.fields.items()
        if name.startswith(ORIG_SHAPE)
    }
    bad = [f"{t.name} ({t.tensor_type.name})" for t in reader.tensors if t.tensor_type.name not in SUPPORTED]
    if bad:
        raise CheckpointError(f"{path}: GGUF quantisation types not supported (only {', '.join(SUPPORTED)}): "
                              f"{name_some(bad, 4)}")  # fmt: skip
    out = {}
    for t in reader.tensors:
        shape = orig.get(t.name, tuple(int(x) for x in reversed(t.shape.tolist())))
        if int(np.prod(shape)) != int(t.n_elements):
            raise CheckpointError(f"{path}: {t.name} has {t.n_elements} elements, its shape says {shape}")
        dtype = _STORED.get(t.tensor_type.name, torch.float32)
        out[t.name] = LazyTensor(shape, dtype, _reader(gguf, t, shape, dtype))
    return out


def _reader(gguf, t, shape: tuple[int, ...], dtype: torch.dtype):
    def read() -> torch.Tensor:
        qtype = t.tensor_type
        if qtype.name in ("F32", "F16"):
            data = np.array(t.data)  # copy out of the memory map
        else:
            data = gguf.quants.dequantize(np.asarray(t.data), qtype)  # (…, n) float32
        return torch.from_numpy(np.ascontiguousarray(data)).reshape(shape).to(dtype)

    return read


__all__ = ["ORIG_SHAPE", "SUPPORTED", "open_gguf"]
