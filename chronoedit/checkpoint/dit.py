"""Load the DiT from any of its formats: a diffusers ``transformer/`` folder (or the pipeline folder above it),
a native folder or file, or a single file in the original Wan naming (ComfyUI / Kijai repacks: any prefix,
fp32/fp16/bf16 or fp8 with scales).

Every path ends in the same strict, lean load: the model is built on ``meta``, cast to the target dtype with
the fp32 islands kept, and filled one tensor at a time (see :mod:`chronoedit.checkpoint.load`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from chronoedit.checkpoint.detect import Detected, detect, open_checkpoint
from chronoedit.checkpoint.errors import CheckpointError
from chronoedit.checkpoint.fp8 import AUX_SUFFIXES, FP8_DTYPES, Fp8Parts, dequantize, keep_fp8, split_fp8
from chronoedit.checkpoint.keymap import KeyMap
from chronoedit.checkpoint.keymaps.dit import DIFFUSERS_TO_OURS, WAN_PREFIXES, config_from_diffusers
from chronoedit.checkpoint.load import cast_params, load_into
from chronoedit.checkpoint.native import INDEX, file_config, load_native_config
from chronoedit.checkpoint.safetensors_io import SafetensorsFile
from chronoedit.models.dit import ChronoEditDiT, DiTConfig

log = logging.getLogger(__name__)

# Our names are Wan's: the identity on every key our DiT has (patterns from the diffusers map's targets).
WAN_TO_OURS = KeyMap([(dst, dst) for _, dst in DIFFUSERS_TO_OURS.rules])
DIT_NAMINGS = {"diffusers": DIFFUSERS_TO_OURS, "wan": WAN_TO_OURS}
WAN_HEAD_DIM = 128  # every released Wan 2.1 model (1.3B: 12 × 128, 14B: 40 × 128)
_BLOCK = re.compile(r"blocks\.(\d+)\.")


def config_from_shapes(shapes: Mapping[str, tuple[int, ...]], *, head_dim: int = WAN_HEAD_DIM) -> DiTConfig:
    """A :class:`DiTConfig` read off the tensor shapes of a Wan-named DiT (single files carry no config).

    The head count is not in the shapes: ``dim / head_dim`` with Wan's head dim 128 unless told otherwise.
    """
    try:
        dim, in_channels, *patch = shapes["patch_embedding.weight"]
        head_out = shapes["head.head.weight"][0]
        cfg = dict(
            dim=dim,
            num_heads=dim // head_dim,
            num_layers=1 + max(int(m.group(1)) for k in shapes if (m := _BLOCK.match(k))),
            ffn_dim=shapes["blocks.0.ffn.0.weight"][0],
            in_channels=in_channels,
            out_channels=head_out // math.prod(patch),
            patch_size=tuple(patch),
            text_dim=shapes["text_embedding.0.weight"][1],
            image_dim=shapes["img_emb.proj.0.weight"][0] if "img_emb.proj.0.weight" in shapes else None,
            freq_dim=shapes["time_embedding.0.weight"][1],
            qk_norm="blocks.0.self_attn.norm_q.weight" in shapes,
            cross_attn_norm="blocks.0.norm3.weight" in shapes,
        )
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"cannot infer the DiT config from the tensor shapes (missing {e})") from e
    if dim % head_dim:
        raise CheckpointError(f"DiT width {dim} is not a multiple of head_dim={head_dim}; pass config=")
    return DiTConfig(**cfg)


def _locate(path: Path) -> tuple[Path, DiTConfig | None]:
    """(the tensors' file or folder, its config if the layout has one)."""
    if path.is_dir():
        if (path / "model_index.json").is_file():  # a diffusers pipeline folder: its transformer
            path = path / "transformer"
        if (path / INDEX).is_file():  # a native folder
            native = load_native_config(path)
            if native.dit is None:
                raise CheckpointError(f"{path}: this native checkpoint has no DiT")
            return native.path("dit"), native.dit
        config_file = path / "config.json"
        if not config_file.is_file():
            raise CheckpointError(f"{path}: a DiT folder needs config.json (diffusers) or chronoedit.yaml (native)")
        try:
            return path, config_from_diffusers(json.loads(config_file.read_text()))
        except (OSError, json.JSONDecodeError, ValueError, TypeError) as e:
            raise CheckpointError(f"{config_file}: not a usable DiT config ({e})") from e
    if path.is_file() and path.suffix == ".safetensors":
        found = file_config(path)  # a native file carries its config
        if found is not None:
            if found[0] != "dit":
                raise CheckpointError(f"{path}: holds the {found[0]}, not the DiT")
            return path, found[1]
    if not path.exists():
        raise CheckpointError(f"{path}: no such DiT checkpoint")
    return path, None


@dataclass
class DiTSource:
    """A DiT checkpoint, inspected (headers only): where its tensors are, their format, the config, and the
    parameters under our names with the fp8 scales set apart."""

    where: Path  # the file or folder holding the tensors
    format: Detected
    config: DiTConfig
    parts: Fp8Parts  # params and scales, our names

    @property
    def what(self) -> str:
        return f"{self.where} (DiT)"


def inspect_dit(path: str | os.PathLike, config: DiTConfig | None = None) -> DiTSource:
    """Locate, detect and rename a DiT checkpoint without reading tensor data. The config is ``config`` if
    given, else the checkpoint's, else read off the tensor shapes. Unknown keys raise, naming them."""
    where, found = _locate(Path(path))
    tensors = open_checkpoint(where)
    what = f"{where} (DiT)"
    fmt = detect(tensors, DIT_NAMINGS, prefixes=WAN_PREFIXES, aux=AUX_SUFFIXES, what=what)
    metadata = SafetensorsFile(where).metadata if where.is_file() and where.suffix == ".safetensors" else {}
    parts = split_fp8({fmt.strip(k): v for k, v in tensors.items()}, metadata, what)
    naming = DIT_NAMINGS[fmt.naming]
    parts = Fp8Parts(naming.convert(parts.params, what), naming.convert(parts.scales, what))
    cfg = config or found
    if cfg is None:
        try:
            cfg = config_from_shapes({k: tuple(v.shape) for k, v in parts.params.items()})
        except CheckpointError as e:
            raise CheckpointError(f"{what}: {e}") from e
    return DiTSource(where, fmt, cfg, parts)


def load_dit(
    path: str | os.PathLike,
    *,
    dtype: torch.dtype = torch.bfloat16,
    device: torch.device | str = "cpu",
    fp8: str = "dequantize",
    config: DiTConfig | None = None,
    **overrides: Any,
) -> ChronoEditDiT:
    """The DiT at ``path``, weights in ``dtype`` (fp32 islands kept fp32), on ``device``.

    ``path``: a diffusers ``transformer/`` folder or pipeline folder, a native folder or ``dit.safetensors``, or a
    single Wan-named file. ``fp8``: "dequantize" (fp8 weights × scales, then ``dtype``) or "keep" (block
    linears whose weights are stored fp8 stay fp8 in memory, as :class:`~chronoedit.checkpoint.fp8.FP8Linear`).
    ``config`` replaces the config found in (or inferred from) the checkpoint; ``overrides`` change fields of it
    (e.g. ``attn_backend``).
    """
    if fp8 not in ("dequantize", "keep"):
        raise ValueError(f"fp8={fp8!r} must be 'dequantize' or 'keep'")
    src = inspect_dit(path, config)
    cfg = src.config.replace(**overrides) if overrides else src.config
    log.info("%s: %s", src.where, src.format.describe())
    parts = src.parts
    with torch.device("meta"):
        model = ChronoEditDiT(cfg)
    cast_params(model, dtype, ChronoEditDiT.keep_fp32)
    kept: set[str] = set()
    if fp8 == "keep" and src.format.fp8:
        stored_fp8 = [k.removesuffix(".weight") for k, t in parts.params.items() if t.dtype in FP8_DTYPES]
        linears = [n for n in stored_fp8 if n.startswith("blocks.") and isinstance(model.get_submodule(n), nn.Linear)]
        kept = {f"{n}.weight" for n in keep_fp8(model, linears, parts)}
        log.info("%s: %d block linears kept in fp8", src.where, len(kept))

    def convert(name: str, t: torch.Tensor) -> torch.Tensor:
        if t.dtype in FP8_DTYPES and name not in kept:
            return dequantize(t, parts.scale_of(name))
        return t

    load_into(model, parts.params, what=src.what, convert=convert if src.format.fp8 else None, device=device)
    return model.eval()


__all__ = ["DIT_NAMINGS", "WAN_TO_OURS", "DiTSource", "config_from_shapes", "inspect_dit", "load_dit"]
