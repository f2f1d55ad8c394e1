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
from chronoedit.checkpoint.fp8 import AUX_SUFFIXES, FP8_DTYPES, Fp8Parts, dequantizer, keep_fp8, split_fp8
from chronoedit.checkpoint.keymap import KeyMap
from chronoedit.checkpoint.keymaps.dit import DIFFUSERS_TO_OURS, WAN_PREFIXES
from chronoedit.checkpoint.registry import Source, load, open_component
from chronoedit.checkpoint.safetensors_io import SafetensorsFile
from chronoedit.models.dit import ChronoEditDiT, DiTConfig

log = logging.getLogger(__name__)

# Our names are Wan's: the identity on every key our DiT has (patterns from the diffusers map's targets).
WAN_TO_OURS = KeyMap([(dst, dst) for _, dst in DIFFUSERS_TO_OURS.rules])
DIT_NAMINGS = {"diffusers": DIFFUSERS_TO_OURS, "wan": WAN_TO_OURS}
# The head count is not in the shapes. Released Wan 2.1 widths have head dim 128 (1.3B: 1536 = 12 × 128, 14B:
# 5120 = 40 × 128); any other width is ambiguous (e.g. 2048 could be 16 × 128 or 32 × 64) and needs the override.
RELEASED_HEADS = {1536: 12, 5120: 40}
_BLOCK = re.compile(r"blocks\.(\d+)\.")


def config_from_shapes(shapes: Mapping[str, tuple[int, ...]], *, num_heads: int | None = None) -> DiTConfig:
    """A :class:`DiTConfig` read off the tensor shapes of a Wan-named DiT (single files carry no config).

    The head count is not in the shapes: ``num_heads`` if given, else that of the released Wan width
    (:data:`RELEASED_HEADS`); any other width is a CheckpointError naming the override ``model.dit.num_heads``.
    """
    try:
        dim, in_channels, *patch = shapes["patch_embedding.weight"]
        head_out = shapes["head.head.weight"][0]
        cfg = dict(
            dim=dim,
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
    heads = num_heads or RELEASED_HEADS.get(dim)
    if heads is None:
        raise CheckpointError(
            f"the head count of a width-{dim} DiT is not in its shapes (known: {RELEASED_HEADS}); "
            "pass model.dit.num_heads=<heads>"
        )
    if dim % heads:
        raise CheckpointError(f"DiT width {dim} is not a multiple of num_heads={heads}")
    return DiTConfig(**cfg, num_heads=heads)


def read_single_dit(path: Path, config: DiTConfig | None = None, hints: Mapping | None = None) -> Source:
    """A one-file DiT in the original Wan naming (ComfyUI / Kijai repacks: any prefix) or diffusers naming,
    fp32/fp16/bf16 or fp8 with scales, or GGUF. Single files carry no config: ``config``, else read off the
    shapes (``hints``: config fields the shapes cannot tell, e.g. ``{"num_heads": 12}``)."""
    tensors = open_checkpoint(path)
    what = f"{path} (DiT)"
    fmt = detect(tensors, DIT_NAMINGS, prefixes=WAN_PREFIXES, aux=AUX_SUFFIXES, what=what)
    metadata = SafetensorsFile(path).metadata if path.suffix == ".safetensors" else {}
    parts = split_fp8({fmt.strip(k): v for k, v in tensors.items()}, metadata, what)
    naming = DIT_NAMINGS[fmt.naming]
    parts = Fp8Parts(naming.convert(parts.params, what), naming.convert(parts.scales, what))
    if config is None:
        try:
            shapes = {k: tuple(v.shape) for k, v in parts.params.items()}
            config = config_from_shapes(shapes, num_heads=(hints or {}).get("num_heads"))
        except CheckpointError as e:
            raise CheckpointError(f"{what}: {e}") from e
    describe = fmt.describe() + (", GGUF (dequantised on load)" if path.suffix == ".gguf" else "")
    src = Source("dit", path, config, parts.params, fp8_scales=parts.scales, describe=describe)
    if fmt.fp8:
        src.convert = dequantizer(parts)
        src.prepare = _keep_fp8_linears
    return src


def _keep_fp8_linears(model: nn.Module, src: Source):
    """fp8="keep": block linears whose weights are stored fp8 become :class:`FP8Linear` (fp8 in memory)."""
    parts = Fp8Parts(dict(src.tensors), dict(src.fp8_scales))
    stored = [k.removesuffix(".weight") for k, t in parts.params.items() if t.dtype in FP8_DTYPES]
    linears = [n for n in stored if n.startswith("blocks.") and isinstance(model.get_submodule(n), nn.Linear)]
    kept = {f"{n}.weight" for n in keep_fp8(model, linears, parts)}
    log.info("%s: %d block linears kept in fp8", src.where, len(kept))
    src.tensors = parts.params  # now with the kept layers' scale_weight entries
    return dequantizer(parts, kept)


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


__all__ = [
    "DIT_NAMINGS",
    "RELEASED_HEADS",
    "WAN_TO_OURS",
    "config_from_shapes",
    "inspect_dit",
    "load_dit",
    "read_single_dit",
]
