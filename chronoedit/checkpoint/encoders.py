"""The text encoder's own single-file formats (Wan 2.1's ``models_t5_umt5-xxl-enc-bf16.pth`` or a
``.safetensors`` in Wan's or transformers' naming, its config read off the shapes), and the two encoder loaders.
Every other layout, and the load itself, is the registry's (:mod:`chronoedit.checkpoint.registry`)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from chronoedit.checkpoint.detect import detect, open_checkpoint
from chronoedit.checkpoint.errors import CheckpointError
from chronoedit.checkpoint.keymaps.umt5 import TRANSFORMERS_TO_OURS, WAN_TO_OURS, config_from_shapes, untie_embedding
from chronoedit.checkpoint.registry import Source, load, open_component
from chronoedit.models.text.config import UMT5Config

UMT5_PREFIXES = ("text_encoder.", "encoder.model.")  # how some one-file repacks nest the encoder


def read_single_umt5(path: str | os.PathLike, config: UMT5Config | None = None) -> Source:
    path = Path(path)
    what = f"{path} (UMT5)"
    tensors = open_checkpoint(path)
    maps = {"wan": WAN_TO_OURS, "transformers": TRANSFORMERS_TO_OURS}
    fmt = detect(tensors, maps, prefixes=UMT5_PREFIXES, what=what)
    stripped = untie_embedding({fmt.strip(k): v for k, v in tensors.items()})
    ours = maps[fmt.naming].convert(stripped, what)
    try:
        cfg = config or config_from_shapes(ours)
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{what}: cannot infer the encoder's config from its tensors ({e})") from e
    return Source("text_encoder", path, cfg, ours, describe=fmt.describe())


def load_text_encoder(
    path: str | os.PathLike, *, dtype: torch.dtype = torch.bfloat16, device: torch.device | str = "cpu"
) -> nn.Module:
    """The UMT5 encoder at ``path`` (transformers folder, pipeline folder, native folder or file, or one file in
    Wan's / transformers' naming)."""
    return load(open_component(path, "text_encoder"), dtype=dtype, device=device)


def load_image_encoder(
    path: str | os.PathLike, *, dtype: torch.dtype = torch.bfloat16, device: torch.device | str = "cpu"
) -> nn.Module:
    """The CLIP vision tower at ``path`` (transformers folder, pipeline folder, native folder or file)."""
    return load(open_component(path, "image_encoder"), dtype=dtype, device=device)


__all__ = ["load_image_encoder", "load_text_encoder", "read_single_umt5"]
