"""The encoders' own single-file formats, their configs read off the shapes, and the two encoder loaders.

* UMT5: Wan 2.1's ``models_t5_umt5-xxl-enc-bf16.pth`` or a ``.safetensors`` in Wan's or transformers' naming
  (ComfyUI's ``umt5_xxl_fp8_e4m3fn_scaled.safetensors``: fp8 "scaled", both ComfyUI conventions, dequantised on
  load; its tokenizer embedded as the uint8 tensor ``spiece_model``, see :func:`embedded_tokenizer`).
* CLIP vision: one file in transformers' (``vision_model.…``), open-clip's (``visual.transformer.resblocks.N…``,
  ComfyUI's ``clip_vision_h.safetensors``) or Wan's (``models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth``)
  naming; fused q/k/v split in thirds; text-tower keys ignored. The head count is not in the shapes: 16 for the
  released ViT-H/14 width 1280, else ``model.image_encoder.num_heads`` must be given.

Every other layout, and the load itself, is the registry's (:mod:`chronoedit.checkpoint.registry`)."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from chronoedit.checkpoint.detect import detect, open_checkpoint
from chronoedit.checkpoint.errors import CheckpointError
from chronoedit.checkpoint.fp8 import AUX_SUFFIXES, Fp8Parts, dequantizer, split_fp8
from chronoedit.checkpoint.keymap import KeyMap
from chronoedit.checkpoint.keymaps import clip as clip_keys
from chronoedit.checkpoint.keymaps.umt5 import TRANSFORMERS_TO_OURS, WAN_TO_OURS, config_from_shapes, untie_embedding
from chronoedit.checkpoint.load import materialize, reshaped, rows
from chronoedit.checkpoint.registry import Source, load, open_component
from chronoedit.checkpoint.safetensors_io import SafetensorsFile
from chronoedit.models.clip import CLIPVisionConfig
from chronoedit.models.text.config import UMT5Config

UMT5_PREFIXES = ("text_encoder.", "encoder.model.")  # how some one-file repacks nest the encoder
SPIECE_KEY = "spiece_model"  # ComfyUI's embedded tokenizer: the bytes of a sentencepiece model as a uint8 tensor
UMT5_CONFIG_FIELDS = ("max_distance", "eps")  # what the shapes cannot tell (hints may set them)


def _metadata(path: Path) -> dict[str, str]:
    return SafetensorsFile(path).metadata if path.suffix == ".safetensors" else {}


def read_single_umt5(
    path: str | os.PathLike, config: UMT5Config | None = None, hints: Mapping[str, Any] | None = None
) -> Source:
    path = Path(path)
    what = f"{path} (UMT5)"
    tensors = open_checkpoint(path)
    tensors.pop(SPIECE_KEY, None)  # the embedded tokenizer (read by embedded_tokenizer)
    maps = {"wan": WAN_TO_OURS, "transformers": TRANSFORMERS_TO_OURS}
    fmt = detect(tensors, maps, prefixes=UMT5_PREFIXES, aux=AUX_SUFFIXES, what=what)
    parts = split_fp8(untie_embedding({fmt.strip(k): v for k, v in tensors.items()}), _metadata(path), what)
    naming = maps[fmt.naming]
    parts = Fp8Parts(naming.convert(parts.params, what), naming.convert(parts.scales, what))
    try:
        fields = {k: v for k, v in (hints or {}).items() if k in UMT5_CONFIG_FIELDS}
        cfg = config or config_from_shapes(parts.params, **fields)
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{what}: cannot infer the encoder's config from its tensors ({e})") from e
    src = Source("text_encoder", path, cfg, parts.params, fp8_scales=parts.scales, describe=fmt.describe())
    if fmt.fp8:
        src.convert = dequantizer(parts)
    return src


def embedded_tokenizer(path: str | os.PathLike) -> bytes | None:
    """The sentencepiece model embedded in a one-file text encoder (ComfyUI's ``spiece_model``), or None."""
    path = Path(path)
    if not (path.is_file() and path.suffix == ".safetensors"):
        return None
    header = SafetensorsFile(path)
    if SPIECE_KEY not in header:
        return None
    info = header[SPIECE_KEY]
    if info.dtype != torch.uint8 or len(info.shape) != 1:
        raise CheckpointError(f"{path}: {SPIECE_KEY} is {info.dtype} {tuple(info.shape)}, not a uint8 byte string")
    return bytes(materialize(info).numpy().tobytes())


# ---------------------------------------------------------------------------------------------- CLIP vision

RELEASED_CLIP_HEADS = {1280: 16}  # ViT-H/14, the released model's tower (head dim 80)
CLIP_CONFIG_FIELDS = ("num_heads", "activation", "eps")  # what the shapes cannot tell (hints may set them)
_CLIP_NAMINGS = {  # naming -> (block key prefix, fused q/k/v suffixes)
    "transformers": (f"{clip_keys.PREFIX}encoder.layers", {}),
    "open_clip": (clip_keys.ONE_FILE_BLOCKS["open_clip"], clip_keys.OPEN_CLIP_FUSED),
    "wan": (clip_keys.ONE_FILE_BLOCKS["wan"], clip_keys.WAN_FUSED),
}


def _clip_map(naming: str, num_layers: int) -> KeyMap:
    if naming == "transformers":
        return clip_keys.transformers_to_ours(num_layers)
    return clip_keys.one_file_to_ours(naming, num_layers)


def clip_config_from_shapes(shapes: Mapping[str, tuple[int, ...]], num_layers: int, hints: Mapping[str, Any]):
    """A :class:`CLIPVisionConfig` off our-named shapes; the head count from ``hints`` or the released width."""
    dim, channels, patch, _ = shapes["patch_embedding.weight"]
    tokens = math.prod(shapes["position_embedding"]) // dim
    side = math.isqrt(tokens - 1)
    heads = hints.get("num_heads") or RELEASED_CLIP_HEADS.get(dim)
    if heads is None:
        raise CheckpointError(
            f"the head count of a width-{dim} CLIP tower is not in its shapes (known: {RELEASED_CLIP_HEADS}); "
            "pass model.image_encoder.num_heads=<heads>"
        )
    fields = {k: v for k, v in hints.items() if k in CLIP_CONFIG_FIELDS and k != "num_heads"}
    return CLIPVisionConfig(
        dim=dim, ffn_dim=shapes["blocks.0.mlp.fc1.weight"][0], num_heads=heads, num_layers=num_layers,
        patch_size=patch, image_size=side * patch, num_channels=channels, **fields,
    )  # fmt: skip


def read_single_clip(
    path: str | os.PathLike, config: CLIPVisionConfig | None = None, hints: Mapping[str, Any] | None = None
) -> Source:
    """A one-file CLIP vision tower (transformers, open-clip or Wan naming; see the module doc)."""
    path = Path(path)
    what = f"{path} (CLIP vision)"
    tensors = {k: v for k, v in open_checkpoint(path).items() if not k.startswith(clip_keys.TEXT_TOWER_PREFIXES)}
    counts = {}
    for naming, (blocks, _) in _CLIP_NAMINGS.items():
        pattern = re.compile(re.escape(blocks) + r"\.(\d+)\.")
        counts[naming] = {int(m.group(1)) for k in tensors if (m := pattern.match(k))}
    naming = max(counts, key=lambda n: len(counts[n]))
    if not counts[naming]:
        raise CheckpointError(f"{what}: no CLIP vision blocks in any known naming ({', '.join(_CLIP_NAMINGS)})")
    num_layers = config.num_layers if config is not None else 1 + max(counts[naming])
    fused = _CLIP_NAMINGS[naming][1]
    keymap = _clip_map(naming, num_layers)
    split = clip_keys.split_fused(tensors, fused, rows) if fused else tensors
    if keymap.matches(split) < 0.5:  # e.g. a prefix we do not know: refuse before anything is read
        raise CheckpointError(f"{what}: not a recognised CLIP vision file ({naming} block names, other keys unknown)")
    ours = keymap.convert(split, what)
    dim = ours["patch_embedding.weight"].shape[0]
    if len(ours["class_embedding"].shape) != 1:
        ours["class_embedding"] = reshaped(ours["class_embedding"], (dim,))
    pos = ours["position_embedding"]
    if len(pos.shape) != 2:
        ours["position_embedding"] = reshaped(pos, (math.prod(pos.shape) // dim, dim))
    if config is None:
        try:
            config = clip_config_from_shapes({k: tuple(v.shape) for k, v in ours.items()}, num_layers, hints or {})
        except (KeyError, ValueError) as e:
            raise CheckpointError(f"{what}: cannot infer the tower's config from its tensors ({e})") from e
        except CheckpointError as e:
            raise CheckpointError(f"{what}: {e}") from None
    return Source("image_encoder", path, config, ours, describe=f"{naming} naming, {num_layers} blocks")


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


__all__ = ["embedded_tokenizer", "load_image_encoder", "load_text_encoder", "read_single_clip", "read_single_umt5"]
