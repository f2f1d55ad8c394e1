"""Load the VAE from a diffusers ``vae/`` folder (or the pipeline folder above it), a native folder or file, or
Wan 2.1's original ``Wan2.1_VAE.pth`` (read with ``torch.load(weights_only=True)``) / a ``.safetensors`` in
either naming. The format is detected from the keys and logged."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from chronoedit.checkpoint.detect import detect, open_checkpoint
from chronoedit.checkpoint.diffusers_layout import read_component
from chronoedit.checkpoint.errors import CheckpointError
from chronoedit.checkpoint.load import TensorLike, build_and_load
from chronoedit.checkpoint.native import INDEX, file_config, load_component
from chronoedit.models.vae import VAE_PRESETS, VAEConfig, WanVAE

log = logging.getLogger(__name__)

VAE_PREFIXES = ("vae.", "first_stage_model.")  # how some single-file repacks nest the VAE


def read_single_file(path: Path, config: VAEConfig | None) -> tuple[VAEConfig, dict[str, TensorLike]]:
    """(config, tensors under our names) of a one-file VAE in the original Wan or the diffusers naming. Such
    files carry no config: the released Wan 2.1 VAE's unless ``config`` says otherwise."""
    from chronoedit.checkpoint.keymaps.vae import WAN_TO_OURS, diffusers_to_ours

    cfg = config or VAE_PRESETS["wan21"]
    tensors = open_checkpoint(path)
    maps = {"wan": WAN_TO_OURS, "diffusers": diffusers_to_ours(cfg)}
    fmt = detect(tensors, maps, prefixes=VAE_PREFIXES, what=f"{path} (VAE)")
    log.info("%s: VAE in %s", path, fmt.describe())
    stripped = {fmt.strip(k): v for k, v in tensors.items()}
    return cfg, maps[fmt.naming].convert(stripped, f"{path} (VAE)")


def load_vae(
    path: str | os.PathLike,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    config: VAEConfig | None = None,
) -> WanVAE:
    """The VAE at ``path`` in ``dtype`` on ``device``, loaded strictly (every missing, unexpected or misshaped
    key named) and leanly (built on ``meta``, one tensor at a time). ``config`` replaces the checkpoint's
    (needed only for one-file VAEs of another architecture than Wan 2.1's)."""
    path = Path(path)
    if path.is_dir() and (path / INDEX).is_file():
        log.info("%s: native VAE", path)
        return load_component(path, "vae", dtype=dtype, device=device, config=config)
    if path.is_dir():
        cfg, tensors = read_component(path, "vae")
        log.info("%s: diffusers VAE", path)
        cfg = config or cfg
    elif path.is_file():
        if path.suffix == ".safetensors" and file_config(path) is not None:
            log.info("%s: native VAE file", path)
            return load_component(path, "vae", dtype=dtype, device=device, config=config)
        cfg, tensors = read_single_file(path, config)
    else:
        raise CheckpointError(f"{path}: no such VAE checkpoint")
    return build_and_load(WanVAE, cfg, tensors, dtype=dtype, device=device, what=f"{path} (VAE)")


__all__ = ["load_vae", "read_single_file"]
