"""Load a transformers ``text_encoder/`` folder (config.json + safetensors, sharded or not) lean and strict."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from chronoedit.checkpoint.diffusers_layout import read_json
from chronoedit.checkpoint.load import build_and_load, open_safetensors
from chronoedit.models.text.config import UMT5Config
from chronoedit.models.text.umt5 import UMT5Encoder


def read_config(folder: str | os.PathLike) -> UMT5Config:
    """The :class:`UMT5Config` of a transformers ``config.json`` in ``folder``."""
    # imported here: the key-map module imports this package's config (a cycle at import time otherwise)
    from chronoedit.checkpoint.keymaps.umt5 import config_from_transformers

    return config_from_transformers(read_json(Path(folder) / "config.json"))


def load_umt5(
    folder: str | os.PathLike,
    dtype: torch.dtype = torch.bfloat16,
    device: torch.device | str = "cpu",
    config: UMT5Config | None = None,
) -> UMT5Encoder:
    """The encoder of ``folder``, weights cast to ``dtype`` (norms kept fp32) while read, on ``device``.

    Built on ``meta`` and filled one tensor at a time, so peak host memory is about the loaded model (an fp32
    checkpoint loaded as bf16 never exists in fp32). Every missing, unexpected or misshaped key is an error.
    """
    from chronoedit.checkpoint.keymaps.umt5 import TRANSFORMERS_TO_OURS, untie_embedding  # see read_config

    cfg = config if config is not None else read_config(folder)
    what = f"{folder} (UMT5)"
    tensors = TRANSFORMERS_TO_OURS.convert(untie_embedding(open_safetensors(folder)), what)
    return build_and_load(UMT5Encoder, cfg, tensors, dtype=dtype, device=device, what=what)


__all__ = ["load_umt5", "read_config"]
