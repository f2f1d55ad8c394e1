"""The diffusers pipeline layout: which folder holds which component, how each one's config and tensors read
into ours, and how to write them back.

    model_index.json  transformer/  vae/  text_encoder/  image_encoder/  tokenizer/  image_processor/  scheduler/
    (+ lora/ in the released ChronoEdit repo). Each model folder: config.json + *.safetensors (sharded with a
    *.safetensors.index.json or not).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from chronoedit.checkpoint.errors import CheckpointError
from chronoedit.checkpoint.load import TensorLike, open_safetensors
from chronoedit.checkpoint.writer import pending, write_sharded

FOLDERS = {"dit": "transformer", "vae": "vae", "text_encoder": "text_encoder", "image_encoder": "image_encoder"}
WEIGHT_STEMS = {"dit": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model", "text_encoder": "model"}
CLASS_NAMES = {"dit": "ChronoEditTransformer3DModel", "vae": "AutoencoderKLWan"}


def component_folder(path: str | os.PathLike, name: str) -> Path:
    """The folder of component ``name``: ``path`` itself if it holds a config.json, else ``path/<folder>``."""
    path = Path(path)
    if (path / "model_index.json").is_file() or not (path / "config.json").is_file():
        path = path / FOLDERS[name]
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path}: missing component folder or its config.json ({name})")
    return path


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read ({e})") from e


def read_component(path: str | os.PathLike, name: str) -> tuple[Any, dict[str, TensorLike]]:
    """(our config, tensors under our names) of component ``name`` of a diffusers pipeline (or its folder).

    Reads headers only; keys no map knows, a missing shard or a truncated file raise a CheckpointError.
    """
    folder = component_folder(path, name)
    what = f"{folder} ({name})"
    config = read_json(folder / "config.json")
    try:
        if name == "dit":
            from chronoedit.checkpoint.keymaps.dit import DIFFUSERS_TO_OURS, config_from_diffusers

            cfg = config_from_diffusers(config)
            return cfg, DIFFUSERS_TO_OURS.convert(open_safetensors(folder), what)
        if name == "vae":
            from chronoedit.checkpoint.keymaps.vae import config_from_diffusers, diffusers_to_ours

            cfg = config_from_diffusers(config)
            return cfg, diffusers_to_ours(cfg).convert(open_safetensors(folder), what)
        if name == "text_encoder":
            from chronoedit.checkpoint.keymaps.umt5 import (
                TRANSFORMERS_TO_OURS,
                config_from_transformers,
                untie_embedding,
            )

            cfg = config_from_transformers(config)
            return cfg, TRANSFORMERS_TO_OURS.convert(untie_embedding(open_safetensors(folder)), what)
        if name == "image_encoder":
            from chronoedit.checkpoint.keymaps.clip import config_from_transformers, transformers_to_ours, with_prefix

            cfg = config_from_transformers(config)
            return cfg, transformers_to_ours(cfg.num_layers).convert(with_prefix(open_safetensors(folder)), what)
    except (ValueError, TypeError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{folder / 'config.json'}: unsupported config ({e})") from e
    raise ValueError(f"unknown component {name!r}")


def write_component(
    name: str, cfg: Any, tensors: Mapping[str, TensorLike], folder: str | os.PathLike, max_shard_bytes: int = 0
) -> Path:
    """Write component ``name`` (our config and names) as a diffusers / transformers model folder.

    The image encoder cannot be written back: our tower keeps no last block, post-norm nor projection.
    """
    folder = Path(folder)
    if name == "dit":
        from chronoedit.checkpoint.keymaps.dit import OURS_TO_DIFFUSERS, config_to_diffusers

        config, keymap = config_to_diffusers(cfg), OURS_TO_DIFFUSERS
    elif name == "vae":
        from chronoedit.checkpoint.keymaps.vae import config_to_diffusers, diffusers_to_ours

        config, keymap = config_to_diffusers(cfg), diffusers_to_ours(cfg).inverse()
    elif name == "text_encoder":
        from chronoedit.checkpoint.keymaps.umt5 import OURS_TO_TRANSFORMERS, config_to_transformers

        config = {"architectures": ["UMT5EncoderModel"], "model_type": "umt5", **config_to_transformers(cfg)}
        keymap = OURS_TO_TRANSFORMERS
    else:
        raise CheckpointError(
            f"cannot write the {name} in the diffusers layout (the native image encoder drops the checkpoint's "
            "last block, post-norm and projection; copy image_encoder/ from the source)"
        )
    folder.mkdir(parents=True, exist_ok=True)
    if name in CLASS_NAMES:
        config = {"_class_name": CLASS_NAMES[name], **config}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    renamed = keymap.convert(tensors, f"{name} -> diffusers")
    write_sharded({k: pending(v) for k, v in renamed.items()}, folder, WEIGHT_STEMS[name], max_shard_bytes)
    return folder


__all__ = ["FOLDERS", "component_folder", "read_component", "write_component"]
