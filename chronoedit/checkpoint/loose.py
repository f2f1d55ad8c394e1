"""A folder of loose files (ComfyUI's set: ``chrono_edit_14B_fp16.safetensors``, ``wan_2.1_vae.safetensors``,
``umt5_xxl_fp8_e4m3fn_scaled.safetensors``, ``clip_vision_h.safetensors``, …): each file recognised by its keys
(headers only), never by its name, and the released model's built-in defaults for what such a set does not ship.

    file kind       recognised by a key ending in (any prefix, any of the namings each component reads)
    dit             blocks.0.cross_attn.k.weight · blocks.0.attn2.to_k.weight
    vae             decoder.conv1.weight · decoder.conv_in.weight
    text_encoder    layer.0.SelfAttention.q.weight · blocks.0.pos_embedding.embedding.weight
    image_encoder   vision_model.encoder.layers.0.self_attn.q_proj.weight · visual.transformer.resblocks.0.attn.
                    in_proj_weight · visual.transformer.0.attn.to_qkv.weight
    lora            lora_A / lora_B / lora_down / lora_up in a key

Built-in defaults (facts of the released ``nvidia/ChronoEdit-14B-Diffusers``): its image processor
(``CLIPImageProcessor``: shortest edge = the tower's input size, bicubic, centre crop, OpenAI CLIP mean/std) and its
scheduler (UniPC, flow prediction, order 2, bh2, lower order final, 1000 train steps, shift 5.0). Its tokenizer cannot
be built in: it comes from the text encoder file (``spiece_model``), a ``tokenizer/`` folder, or
``components.tokenizer``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from chronoedit.checkpoint.detect import open_checkpoint
from chronoedit.checkpoint.errors import CheckpointError, name_some
from chronoedit.models.clip.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".gguf")
SIGNATURES: dict[str, tuple[str, ...]] = {
    "dit": ("blocks.0.cross_attn.k.weight", "blocks.0.attn2.to_k.weight"),
    "vae": ("decoder.conv1.weight", "decoder.conv_in.weight"),
    "text_encoder": ("layer.0.SelfAttention.q.weight", "blocks.0.pos_embedding.embedding.weight"),
    "image_encoder": (
        "vision_model.encoder.layers.0.self_attn.q_proj.weight",
        "visual.transformer.resblocks.0.attn.in_proj_weight",
        "visual.transformer.0.attn.to_qkv.weight",
    ),
}
LORA_MARKERS = (".lora_A.", ".lora_B.", ".lora_down.", ".lora_up.")

# The released model's scheduler (scheduler/scheduler_config.json of nvidia/ChronoEdit-14B-Diffusers), as
# sampler defaults (see chronoedit.checkpoint.scheduler.sampler_defaults).
RELEASED_SAMPLER: dict[str, Any] = dict(
    name="unipc", shift=5.0, order=2, solver_type="bh2", lower_order_final=True, num_train_timesteps=1000
)


def released_image_processor(image_size: int = 224) -> dict[str, Any]:
    """The released model's ``preprocessor_config.json`` (a CLIPImageProcessor) at the tower's input size."""
    return dict(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        resample=3,  # bicubic
        do_center_crop=True,
        do_resize=True,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(OPENAI_CLIP_MEAN),
        image_std=list(OPENAI_CLIP_STD),
        do_convert_rgb=True,
    )


def identify(path: str | os.PathLike) -> str:
    """The kind of the weights file ``path`` (a component name or "lora"), from its keys (headers only)."""
    path = Path(path)
    keys = list(open_checkpoint(path))
    if any(m in k for k in keys for m in LORA_MARKERS):
        return "lora"
    kinds = [name for name, sigs in SIGNATURES.items() if any(k.endswith(sigs) for k in keys)]
    if len(kinds) != 1:
        why = f"keys of several components ({', '.join(kinds)})" if kinds else "none of the known kinds"
        raise CheckpointError(f"{path}: {why} (DiT, VAE, UMT5, CLIP vision, LoRA); keys: {name_some(keys, 6)}")
    return kinds[0]


def scan_folder(folder: str | os.PathLike) -> tuple[dict[str, Path], list[Path]]:
    """The component files of a loose ``folder`` (name -> file) and its LoRA files. Two files of one kind, or a
    weights file of no known kind, are a CheckpointError naming them."""
    folder = Path(folder)
    found: dict[str, list[Path]] = {}
    loras = []
    for path in sorted(folder.iterdir()):
        if not (path.is_file() and path.suffix in WEIGHT_SUFFIXES):
            continue
        kind = identify(path)
        if kind == "lora":
            loras.append(path)
        else:
            found.setdefault(kind, []).append(path)
    several = {k: v for k, v in found.items() if len(v) > 1}
    if several:
        k, v = next(iter(several.items()))
        raise CheckpointError(f"{folder}: several {k} files ({', '.join(p.name for p in v)}); pass components.{k}=")
    return {k: v[0] for k, v in found.items()}, loras


def check_overrides(files: Mapping[str, Any], known: tuple[str, ...]) -> dict[str, Path]:
    """``files`` (component or folder name -> path) as Paths, each existing; unknown names are an error."""
    unknown = [k for k in files if k not in known]
    if unknown:
        raise CheckpointError(f"unknown components {unknown} (known: {', '.join(known)})")
    out = {k: Path(v) for k, v in files.items() if v}
    absent = [f"components.{k}={p}" for k, p in out.items() if not p.exists()]
    if absent:
        raise CheckpointError(f"no such file or folder: {', '.join(absent)}")
    return out


__all__ = ["RELEASED_SAMPLER", "SIGNATURES", "check_overrides", "identify", "released_image_processor", "scan_folder"]
