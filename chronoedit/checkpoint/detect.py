"""Which format a set of checkpoint keys is in: key naming, key prefix, and fp8 quantisation.

Detection only reads key names and stored dtypes (safetensors headers), never tensor data. The result says
what was found in one line (:meth:`Detected.describe`), which the loaders log.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from chronoedit.checkpoint.errors import CheckpointError, name_some
from chronoedit.checkpoint.fp8 import FP8_DTYPES
from chronoedit.checkpoint.keymap import KeyMap
from chronoedit.checkpoint.load import TensorLike, open_safetensors
from chronoedit.checkpoint.pickle_io import PICKLE_SUFFIXES, load_pickled_tensors
from chronoedit.checkpoint.safetensors_io import DTYPES

_DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


@dataclass(frozen=True)
class Detected:
    """The format of a checkpoint's keys."""

    naming: str  # a key of the candidate maps, e.g. "diffusers" or "wan"
    prefix: str  # stripped from every key ("" if none)
    fp8: str | None  # None, "scaled" (scale tensors present) or "plain" (fp8 weights without scales)
    dtypes: tuple[str, ...]  # stored dtypes, most common first (safetensors names: BF16, F8_E4M3, …)

    def strip(self, key: str) -> str:
        """``key`` without the prefix (keys that lack it are kept as they are)."""
        return key[len(self.prefix) :] if key.startswith(self.prefix) else key

    def describe(self) -> str:
        parts = [f"{self.naming} naming"]
        parts.append(f"key prefix {self.prefix!r}" if self.prefix else "no key prefix")
        parts.append("stored as " + "/".join(self.dtypes))
        if self.fp8 == "scaled":
            parts.append("fp8 weights with per-tensor scales")
        elif self.fp8 == "plain":
            parts.append("fp8 weights without scales")
        return ", ".join(parts)


def open_checkpoint(path: str | os.PathLike) -> dict[str, TensorLike]:
    """The tensors of a ``.safetensors`` file or folder (headers only), or of a pickle (``.pth``/``.pt``/
    ``.bin``/``.ckpt``) read by :func:`~chronoedit.checkpoint.pickle_io.load_pickled_tensors` (``torch.load`` with
    ``weights_only=True``, memory-mapped) — never arbitrary objects — or of a ``.gguf`` file (dequantised when read,
    :mod:`~chronoedit.checkpoint.gguf_io`)."""
    path = Path(path)
    if path.is_file() and path.suffix in PICKLE_SUFFIXES:
        return load_pickled_tensors(path)
    if path.is_file() and path.suffix == ".gguf":
        from chronoedit.checkpoint.gguf_io import open_gguf

        return open_gguf(path)
    return open_safetensors(path)


def strip_prefix(keys: Sequence[str], prefixes: Sequence[str]) -> str:
    """The longest of ``prefixes`` that every key starts with ("" if none does)."""
    for prefix in sorted(prefixes, key=len, reverse=True):
        if prefix and keys and all(k.startswith(prefix) for k in keys):
            return prefix
    return ""


def dtype_name(t: TensorLike) -> str:
    return _DTYPE_NAMES.get(t.dtype, str(t.dtype).removeprefix("torch."))


def detect(
    tensors: Mapping[str, TensorLike],
    maps: Mapping[str, KeyMap],
    *,
    prefixes: Sequence[str] = (),
    aux: Sequence[str] = (),
    what: str = "checkpoint",
) -> Detected:
    """Pick the naming in ``maps`` (name -> map from that naming to ours) that knows the most keys.

    ``aux`` are key suffixes that are not parameters (fp8 scales, markers) and are left out of the vote.
    """
    keys = list(tensors)
    params = [k for k in keys if not k.endswith(tuple(aux))]
    prefix = strip_prefix(params, prefixes)  # markers such as ``scaled_fp8`` may come with or without it
    params = [k[len(prefix) :] for k in params]
    scores = {name: m.matches(params) for name, m in maps.items()}
    naming = max(scores, key=scores.get)
    if scores[naming] < 0.5:
        raise CheckpointError(
            f"{what}: not a recognised format (best: {naming} naming, {scores[naming]:.0%} of keys known); "
            f"keys: {name_some(params, 8)}"
        )
    dtypes = Counter(dtype_name(t) for t in tensors.values())
    has_fp8 = any(t.dtype in FP8_DTYPES for t in tensors.values())
    has_scales = any(k.endswith((".scale_weight", ".weight_scale")) for k in keys)
    fp8 = ("scaled" if has_scales else "plain") if has_fp8 else None
    return Detected(naming, prefix, fp8, tuple(d for d, _ in dtypes.most_common()))


__all__ = ["Detected", "detect", "open_checkpoint", "strip_prefix"]
