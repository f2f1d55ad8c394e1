"""The one reader of pickled checkpoints (``.pth`` / ``.pt`` / ``.bin`` / ``.ckpt``): ``torch.load`` with
``weights_only=True`` (tensors, containers and plain values only — never arbitrary objects), memory-mapped when
the file is in the zip format. Every failure, from a truncated or bit-flipped file to a pickled object, is one
:class:`CheckpointError` line naming the file."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from chronoedit.checkpoint.errors import CheckpointError

PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
_ZIP_MAGIC = b"PK\x03\x04"


def _one_line(e: BaseException) -> str:
    """The informative line of a torch.load error (weights_only errors are an essay; keep the cause)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith(("WeightsUnpickler error:", "Unsupported global", "Unsupported operand")):
            return ln.removeprefix("WeightsUnpickler error:").strip()
    text = lines[0] if lines else type(e).__name__
    return f"{type(e).__name__}: {text[:300]}"


def load_pickle(path: str | os.PathLike) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``, memory-mapped for zip-format files; any
    failure is a :class:`CheckpointError` ``<path>: cannot be loaded with torch.load(weights_only=True) (…)``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        with open(path, "rb") as f:
            zipped = f.read(4) == _ZIP_MAGIC
        # legacy (non-zip) files cannot be memory-mapped; they are read whole (they are at most the file's size)
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
    except Exception as e:  # UnpicklingError for objects, RuntimeError for a corrupt zip, EOFError, …
        raise CheckpointError(f"{path}: cannot be loaded with torch.load(weights_only=True) ({_one_line(e)})") from e


def load_pickled_tensors(path: str | os.PathLike) -> dict[str, Tensor]:
    """The ``{name: tensor}`` of a pickled checkpoint (a ``{"state_dict": {...}}`` wrapper is unwrapped);
    anything else is a :class:`CheckpointError`."""
    state = load_pickle(path)
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(k, str) for k in state):
        raise CheckpointError(f"{path}: expected a mapping of names to tensors, got {type(state).__name__}")
    bad = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(
            f"{path}: expected a mapping of names to tensors; {bad[0]!r} is a {type(state[bad[0]]).__name__}"
        )
    return dict(state)


__all__ = ["PICKLE_SUFFIXES", "load_pickle", "load_pickled_tensors"]
