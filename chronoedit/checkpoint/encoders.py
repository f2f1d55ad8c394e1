"""Load the text and image encoders from either layout: a transformers folder (``text_encoder/``,
``image_encoder/``, or the diffusers pipeline folder above them) or a native folder / file."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from chronoedit.checkpoint.diffusers_layout import component_folder
from chronoedit.checkpoint.native import INDEX, load_component


def _is_native(path: Path) -> bool:
    return (path.is_dir() and (path / INDEX).is_file()) or (path.is_file() and path.suffix == ".safetensors")


def load_text_encoder(
    path: str | os.PathLike, *, dtype: torch.dtype = torch.bfloat16, device: torch.device | str = "cpu"
) -> nn.Module:
    """The UMT5 encoder at ``path`` (transformers folder, pipeline folder, native folder or file)."""
    path = Path(path)
    if _is_native(path):
        return load_component(path, "text_encoder", dtype=dtype, device=device)
    from chronoedit.models.text import load_umt5

    return load_umt5(component_folder(path, "text_encoder"), dtype=dtype, device=device)


def load_image_encoder(
    path: str | os.PathLike, *, dtype: torch.dtype = torch.bfloat16, device: torch.device | str = "cpu"
) -> nn.Module:
    """The CLIP vision tower at ``path`` (transformers folder, pipeline folder, native folder or file)."""
    path = Path(path)
    if _is_native(path):
        return load_component(path, "image_encoder", dtype=dtype, device=device)
    from chronoedit.models.clip import load_clip_vision

    return load_clip_vision(component_folder(path, "image_encoder"), dtype=dtype, device=device)


__all__ = ["load_image_encoder", "load_text_encoder"]
