"""Load a transformers ``image_encoder/`` folder (config.json + safetensors) lean and strict."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from chronoedit.checkpoint.diffusers_layout import read_json
from chronoedit.checkpoint.load import build_and_load, open_safetensors
from chronoedit.models.clip.config import CLIPVisionConfig
from chronoedit.models.clip.vision import CLIPVisionTower


def read_config(folder: str | os.PathLike) -> CLIPVisionConfig:
    """The :class:`CLIPVisionConfig` of a transformers ``config.json`` in ``folder``."""
    # imported here: the key-map module imports this package's config (a cycle at import time otherwise)
    from chronoedit.checkpoint.keymaps.clip import config_from_transformers

    return config_from_transformers(read_json(Path(folder) / "config.json"))


def load_clip_vision(
    folder: str | os.PathLike,
    dtype: torch.dtype = torch.bfloat16,
    device: torch.device | str = "cpu",
    config: CLIPVisionConfig | None = None,
) -> CLIPVisionTower:
    """The vision tower of ``folder`` up to its penultimate block, cast to ``dtype`` (norms kept fp32).

    Strict: every tensor must be used or be one the key map declares dropped (last block, post-norm,
    projection); anything missing or misshaped is an error naming it.
    """
    from chronoedit.checkpoint.keymaps.clip import transformers_to_ours, with_prefix  # see read_config

    cfg = config if config is not None else read_config(folder)
    what = f"{folder} (CLIP vision)"
    tensors = transformers_to_ours(cfg.num_layers).convert(with_prefix(open_safetensors(folder)), what)
    return build_and_load(CLIPVisionTower, cfg, tensors, dtype=dtype, device=device, what=what)


__all__ = ["load_clip_vision", "read_config"]
