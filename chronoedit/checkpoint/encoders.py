"""Load the text and image encoders from either layout: a transformers folder (``text_encoder/``,
``image_encoder/``, or the diffusers pipeline folder above them) or a native folder / file; the text encoder
also from one file in Wan 2.1's naming (``models_t5_umt5-xxl-enc-bf16.pth``) or transformers' naming."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn

from chronoedit.checkpoint.detect import detect, open_checkpoint
from chronoedit.checkpoint.diffusers_layout import component_folder
from chronoedit.checkpoint.errors import CheckpointError
from chronoedit.checkpoint.keymaps.umt5 import TRANSFORMERS_TO_OURS, WAN_TO_OURS, config_from_shapes, untie_embedding
from chronoedit.checkpoint.load import TensorLike, build_and_load
from chronoedit.checkpoint.native import INDEX, file_config, load_component
from chronoedit.models.text.config import UMT5Config

log = logging.getLogger(__name__)

UMT5_PREFIXES = ("text_encoder.", "encoder.model.")  # how some one-file repacks nest the encoder


def _is_native(path: Path) -> bool:
    return (path.is_dir() and (path / INDEX).is_file()) or (
        path.is_file() and path.suffix == ".safetensors" and file_config(path) is not None
    )


def read_umt5_single_file(
    path: str | os.PathLike, config: UMT5Config | None = None
) -> tuple[UMT5Config, dict[str, TensorLike]]:
    """(UMT5Config, tensors under our names) of a one-file UMT5 encoder: Wan 2.1's ``.pth`` (read with
    ``torch.load(weights_only=True, mmap=True)``) or a ``.safetensors`` in Wan's or transformers' naming. Such
    files carry no config: it is read off the shapes unless ``config`` is given."""
    what = f"{path} (UMT5)"
    tensors = open_checkpoint(path)
    maps = {"wan": WAN_TO_OURS, "transformers": TRANSFORMERS_TO_OURS}
    fmt = detect(tensors, maps, prefixes=UMT5_PREFIXES, what=what)
    log.info("%s: UMT5 in %s", path, fmt.describe())
    stripped = untie_embedding({fmt.strip(k): v for k, v in tensors.items()})
    ours = maps[fmt.naming].convert(stripped, what)
    try:
        cfg = config or config_from_shapes(ours)
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{what}: cannot infer the encoder's config from its tensors ({e})") from e
    return cfg, ours


def load_text_encoder(
    path: str | os.PathLike, *, dtype: torch.dtype = torch.bfloat16, device: torch.device | str = "cpu"
) -> nn.Module:
    """The UMT5 encoder at ``path`` (transformers folder, pipeline folder, native folder or file, or one file in
    Wan's / transformers' naming)."""
    path = Path(path)
    if _is_native(path):
        return load_component(path, "text_encoder", dtype=dtype, device=device)
    if path.is_file():
        from chronoedit.models.text import UMT5Encoder

        cfg, tensors = read_umt5_single_file(path)
        return build_and_load(UMT5Encoder, cfg, tensors, dtype=dtype, device=device, what=f"{path} (UMT5)")
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


__all__ = ["load_image_encoder", "load_text_encoder", "read_umt5_single_file"]
