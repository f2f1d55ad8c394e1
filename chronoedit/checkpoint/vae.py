"""The VAE's own single-file formats: Wan 2.1's original ``Wan2.1_VAE.pth`` (read with
``torch.load(weights_only=True)``) or a ``.safetensors`` in the Wan or the diffusers naming, any repack prefix.
Such files carry no config: the released Wan 2.1 VAE's, with the fields ``hints`` (the ``model.vae.*`` overrides)
give. Every other layout, and the load
itself, is the registry's (:mod:`chronoedit.checkpoint.registry`)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from chronoedit.checkpoint.detect import detect, open_checkpoint
from chronoedit.checkpoint.keymaps.vae import WAN_TO_OURS, diffusers_to_ours
from chronoedit.checkpoint.registry import Source, load, open_component
from chronoedit.models.vae import VAE_PRESETS, VAEConfig, WanVAE

VAE_PREFIXES = ("vae.", "first_stage_model.")  # how some single-file repacks nest the VAE


def read_single_vae(path: Path, config: VAEConfig | None = None, hints: Mapping[str, Any] | None = None) -> Source:
    cfg = config or dataclasses.replace(VAE_PRESETS["wan21"], **(hints or {}))
    tensors = open_checkpoint(path)
    maps = {"wan": WAN_TO_OURS, "diffusers": diffusers_to_ours(cfg)}
    fmt = detect(tensors, maps, prefixes=VAE_PREFIXES, what=f"{path} (VAE)")
    stripped = {fmt.strip(k): v for k, v in tensors.items()}
    return Source("vae", path, cfg, maps[fmt.naming].convert(stripped, f"{path} (VAE)"), describe=fmt.describe())


def load_vae(
    path: str | os.PathLike,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    config: VAEConfig | None = None,
) -> WanVAE:
    """The VAE at ``path`` in any layout, in ``dtype`` on ``device``, strictly and leanly. ``config`` replaces
    the checkpoint's (needed only for one-file VAEs of another architecture than Wan 2.1's)."""
    return load(open_component(path, "vae", config), dtype=dtype, device=device)


__all__ = ["load_vae", "read_single_vae"]
