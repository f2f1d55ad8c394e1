"""The DiT's own single-file formats: the original Wan naming (ComfyUI / Kijai repacks: any prefix,
fp32/fp16/bf16 or fp8 with scales, dequantised on load or kept in fp8), its config read off the shapes.

Every other layout, and the load itself, is the registry's (:mod:`chronoedit.checkpoint.registry`).
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from chronoedit.checkpoint.detect import detect, open_checkpoint
from chronoedit.checkpoint.errors import CheckpointError
from chronoedit.checkpoint.fp8 import AUX_SUFFIXES, FP8_DTYPES, Fp8Parts, dequantize, keep_fp8, split_fp8
from chronoedit.checkpoint.keymap import KeyMap
from chronoedit.checkpoint.keymaps.dit import DIFFUSERS_TO_OURS, WAN_PREFIXES
from chronoedit.checkpoint.registry import Source, load, open_component
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


def read_single_dit(path: Path, config: DiTConfig | None = None) -> Source:
    """A one-file DiT in the original Wan naming (ComfyUI / Kijai repacks: any prefix) or diffusers naming,
    fp32/fp16/bf16 or fp8 with scales. Single files carry no config: ``config``, else read off the shapes."""
    tensors = open_checkpoint(path)
    what = f"{path} (DiT)"
    fmt = detect(tensors, DIT_NAMINGS, prefixes=WAN_PREFIXES, aux=AUX_SUFFIXES, what=what)
    metadata = SafetensorsFile(path).metadata if path.suffix == ".safetensors" else {}
    parts = split_fp8({fmt.strip(k): v for k, v in tensors.items()}, metadata, what)
    naming = DIT_NAMINGS[fmt.naming]
    parts = Fp8Parts(naming.convert(parts.params, what), naming.convert(parts.scales, what))
    if config is None:
        try:
            config = config_from_shapes({k: tuple(v.shape) for k, v in parts.params.items()})
        except CheckpointError as e:
            raise CheckpointError(f"{what}: {e}") from e
    src = Source("dit", path, config, parts.params, fp8_scales=parts.scales, describe=fmt.describe())
    if fmt.fp8:
        src.convert = _dequantizer(parts, kept=set())
        src.prepare = _keep_fp8_linears
    return src


def _dequantizer(parts: Fp8Parts, kept: set[str]):
    def convert(name: str, t: torch.Tensor) -> torch.Tensor:
        return dequantize(t, parts.scale_of(name)) if t.dtype in FP8_DTYPES and name not in kept else t

    return convert


def _keep_fp8_linears(model: nn.Module, src: Source):
    """fp8="keep": block linears whose weights are stored fp8 become :class:`FP8Linear` (fp8 in memory)."""
    parts = Fp8Parts(dict(src.tensors), dict(src.fp8_scales))
    stored = [k.removesuffix(".weight") for k, t in parts.params.items() if t.dtype in FP8_DTYPES]
    linears = [n for n in stored if n.startswith("blocks.") and isinstance(model.get_submodule(n), nn.Linear)]
    kept = {f"{n}.weight" for n in keep_fp8(model, linears, parts)}
    log.info("%s: %d block linears kept in fp8", src.where, len(kept))
    src.tensors = parts.params  # now with the kept layers' scale_weight entries
    return _dequantizer(parts, kept)


def inspect_dit(path: str | os.PathLike, config: DiTConfig | None = None) -> Source:
    """The DiT at ``path`` in any layout, headers only (see :func:`chronoedit.checkpoint.registry.open_component`)."""
    return open_component(path, "dit", config)


def load_dit(
    path: str | os.PathLike,
    *,
    dtype: torch.dtype = torch.bfloat16,
    device: torch.device | str = "cpu",
    fp8: str = "dequantize",
    config: DiTConfig | None = None,
) -> ChronoEditDiT:
    """The DiT at ``path`` (a diffusers ``transformer/`` or pipeline folder, a native folder or
    ``dit.safetensors``, or a single Wan-named file), weights in ``dtype`` (fp32 islands kept) on ``device``.
    ``fp8``: "dequantize" or "keep" (block linears stored fp8 stay fp8, as
    :class:`~chronoedit.checkpoint.fp8.FP8Linear`). ``config`` replaces the checkpoint's."""
    return load(inspect_dit(path, config), dtype=dtype, device=device, fp8=fp8)


__all__ = ["DIT_NAMINGS", "WAN_TO_OURS", "config_from_shapes", "inspect_dit", "load_dit", "read_single_dit"]
