"""Every per-component fact of a checkpoint, in one table, and the one path that opens and loads any component.

    component      config / model                     diffusers folder  key map from diffusers
    dit            DiTConfig / ChronoEditDiT          transformer/      keymaps/dit.py (fixed)
    vae            VAEConfig / WanVAE                 vae/              keymaps/vae.py (per config)
    text_encoder   UMT5Config / UMT5Encoder           text_encoder/     keymaps/umt5.py (tied embedding untied)
    image_encoder  CLIPVisionConfig / CLIPVisionTower image_encoder/    keymaps/clip.py (last block dropped)

:func:`open_component` finds a component's tensors (headers only) and config in any layout — a diffusers pipeline
or component folder, a native folder or file, or a single file in the component's own formats (``single_file``:
dit.py, vae.py, encoders.py; a folder of loose single files is :mod:`chronoedit.checkpoint.loose`'s) — and
:func:`load` builds the model on ``meta`` and fills it strictly, one tensor at a time (fp32 islands kept,
fp8 dequantised or kept through the source's hooks).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from chronoedit.checkpoint.errors import CheckpointError
from chronoedit.checkpoint.keymap import KeyMap
from chronoedit.checkpoint.keymaps import clip as clip_keys
from chronoedit.checkpoint.keymaps import dit as dit_keys
from chronoedit.checkpoint.keymaps import umt5 as umt5_keys
from chronoedit.checkpoint.keymaps import vae as vae_keys
from chronoedit.checkpoint.load import TensorLike, check_keys, load_into, open_safetensors
from chronoedit.models.clip import CLIPVisionConfig, CLIPVisionTower
from chronoedit.models.dit import ChronoEditDiT, DiTConfig
from chronoedit.models.precision import KeepFp32, cast_params, keep_fp32_of
from chronoedit.models.text import UMT5Config, UMT5Encoder
from chronoedit.models.vae import VAEConfig, WanVAE

log = logging.getLogger(__name__)

MODEL_INDEX = "model_index.json"  # marks a diffusers pipeline folder
NATIVE_INDEX = "chronoedit.yaml"  # marks a native checkpoint folder


@dataclass
class Source:
    """A component found on disk: its config and its tensors under our names (nothing read yet)."""

    name: str  # "dit" / "vae" / "text_encoder" / "image_encoder"
    where: Path  # the file or folder holding the tensors
    config: Any
    tensors: Mapping[str, TensorLike]
    convert: Callable[[str, Tensor], Tensor] | None = None  # applied to each tensor after reading (fp8 × scale)
    fp8_scales: Mapping[str, TensorLike] = field(default_factory=dict)  # fp8 weights' scales, our names
    prepare: Callable[[nn.Module, Source], Callable[[str, Tensor], Tensor] | None] | None = None  # fp8="keep"
    describe: str = ""  # the detected format, for logs

    @property
    def what(self) -> str:
        return f"{self.where} ({LABELS[self.name]})"


@dataclass(frozen=True)
class Component:
    name: str
    config_cls: type
    model_cls: type[nn.Module]
    folder: str  # subfolder of a diffusers pipeline
    weights_stem: str | None  # weight file stem in that folder; None: not writable in the diffusers layout
    class_name: str | None  # ``_class_name`` of its config.json
    config_from_diffusers: Callable[[dict[str, Any]], Any]
    config_to_diffusers: Callable[[Any], dict[str, Any]] | None
    diffusers_keys: Callable[[Any], KeyMap]  # our config -> map from the diffusers/transformers names to ours
    prepare_diffusers: Callable[[Mapping[str, TensorLike]], dict[str, TensorLike]] = dict
    # the component's own one-file formats: (path, config or None, hints: config fields shapes cannot tell)
    single_file: Callable[[Path, Any, Mapping[str, Any]], Source] | None = None
    needs: tuple[str, ...] = ()  # pipeline folders that come with it (its tokenizer / preprocessing)

    @property
    def keep_fp32(self) -> KeepFp32 | None:
        return keep_fp32_of(self.model_cls)


def _umt5_to_transformers(cfg: UMT5Config) -> dict[str, Any]:
    return {"architectures": ["UMT5EncoderModel"], "model_type": "umt5", **umt5_keys.config_to_transformers(cfg)}


def _single_dit(path: Path, config: Any, hints: Mapping[str, Any]) -> Source:
    from chronoedit.checkpoint.dit import read_single_dit

    return read_single_dit(path, config, hints)


def _single_vae(path: Path, config: Any, hints: Mapping[str, Any]) -> Source:
    from chronoedit.checkpoint.vae import read_single_vae

    return read_single_vae(path, config, hints)


def _single_umt5(path: Path, config: Any, hints: Mapping[str, Any]) -> Source:
    from chronoedit.checkpoint.encoders import read_single_umt5

    return read_single_umt5(path, config, hints)


def _single_clip(path: Path, config: Any, hints: Mapping[str, Any]) -> Source:
    from chronoedit.checkpoint.encoders import read_single_clip

    return read_single_clip(path, config, hints)


COMPONENTS: dict[str, Component] = {
    c.name: c
    for c in (
        Component(
            "dit", DiTConfig, ChronoEditDiT, "transformer", "diffusion_pytorch_model", "ChronoEditTransformer3DModel",
            dit_keys.config_from_diffusers, dit_keys.config_to_diffusers, lambda cfg: dit_keys.DIFFUSERS_TO_OURS,
            single_file=_single_dit,
        ),
        Component(
            "vae", VAEConfig, WanVAE, "vae", "diffusion_pytorch_model", "AutoencoderKLWan",
            vae_keys.config_from_diffusers, vae_keys.config_to_diffusers, vae_keys.diffusers_to_ours,
            single_file=_single_vae,
        ),
        Component(
            "text_encoder", UMT5Config, UMT5Encoder, "text_encoder", "model", None,
            umt5_keys.config_from_transformers, _umt5_to_transformers, lambda cfg: umt5_keys.TRANSFORMERS_TO_OURS,
            prepare_diffusers=umt5_keys.untie_embedding, single_file=_single_umt5, needs=("tokenizer",),
        ),
        Component(
            # native keeps only the blocks the tower runs, so it cannot be written back (no config_to_diffusers)
            "image_encoder", CLIPVisionConfig, CLIPVisionTower, "image_encoder", None, None,
            clip_keys.config_from_transformers, None, lambda cfg: clip_keys.transformers_to_ours(cfg.num_layers),
            prepare_diffusers=clip_keys.with_prefix, single_file=_single_clip, needs=("image_processor",),
        ),
    )
}  # fmt: skip
NAMES = tuple(COMPONENTS)
LABELS = {"dit": "DiT", "vae": "VAE", "text_encoder": "UMT5", "image_encoder": "CLIP vision"}  # in messages


def component(name: str) -> Component:
    if name not in COMPONENTS:
        raise ValueError(f"unknown component {name!r}; known: {NAMES}")
    return COMPONENTS[name]


# ---------------------------------------------------------------------------------------------- diffusers layout


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read ({e})") from e


def component_folder(path: str | os.PathLike, name: str) -> Path:
    """The folder of component ``name``: ``path`` itself if it holds a config.json, else ``path/<folder>``."""
    path = Path(path)
    if (path / MODEL_INDEX).is_file() or not (path / "config.json").is_file():
        path = path / component(name).folder
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path}: missing component folder or its config.json ({name})")
    return path


def read_diffusers(path: str | os.PathLike, name: str, config: Any = None) -> Source:
    """Component ``name`` of a diffusers pipeline (or its own folder): our config (``config`` replaces it) and
    the tensors under our names. Reads headers only; unknown keys or a bad config are a CheckpointError."""
    comp, folder = component(name), component_folder(path, name)
    try:
        cfg = comp.config_from_diffusers(read_json(folder / "config.json"))
    except CheckpointError:
        raise
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{folder / 'config.json'}: not a usable {LABELS[name]} config ({e})") from e
    cfg = config if config is not None else cfg
    tensors = comp.diffusers_keys(cfg).convert(
        comp.prepare_diffusers(open_safetensors(folder)), f"{folder} ({LABELS[name]})"
    )
    return Source(name, folder, cfg, tensors, describe="diffusers layout")


def write_diffusers(
    name: str, cfg: Any, tensors: Mapping[str, TensorLike], folder: str | os.PathLike, max_shard_bytes: int = 0
) -> Path:
    """Write component ``name`` (our config and names) as a diffusers / transformers model folder."""
    from chronoedit.checkpoint.writer import pending, write_sharded

    comp, folder = component(name), Path(folder)
    if comp.config_to_diffusers is None or comp.weights_stem is None:
        raise CheckpointError(
            f"cannot write the {name} in the diffusers layout (the native image encoder drops the checkpoint's "
            "last block, post-norm and projection; copy image_encoder/ from the source)"
        )
    config = comp.config_to_diffusers(cfg)
    if comp.class_name is not None:
        config = {"_class_name": comp.class_name, **config}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    renamed = comp.diffusers_keys(cfg).inverse().convert(tensors, f"{name} -> diffusers")
    write_sharded({k: pending(v) for k, v in renamed.items()}, folder, comp.weights_stem, max_shard_bytes)
    return folder


# ---------------------------------------------------------------------------------------------- any layout


def open_component(
    path: str | os.PathLike, name: str, config: Any = None, hints: Mapping[str, Any] | None = None
) -> Source:
    """Component ``name`` at ``path`` in any layout (headers only). ``config`` replaces the one found in (or read
    off the shapes of) the checkpoint; ``hints`` (config fields, e.g. the ``model.*`` overrides) fill what a
    single file's shapes cannot tell (head counts)."""
    from chronoedit.checkpoint.native import file_config, native_source

    comp, path = component(name), Path(path)
    if path.is_dir() and (path / MODEL_INDEX).is_file():
        return read_diffusers(path, name, config)
    if path.is_dir() and (path / NATIVE_INDEX).is_file():
        return native_source(path, name, config)
    if path.is_dir():
        return read_diffusers(path, name, config)
    if path.is_file() and path.suffix == ".safetensors" and file_config(path) is not None:
        return native_source(path, name, config)
    if not path.exists():
        raise CheckpointError(f"{path}: no such {name} checkpoint")
    if comp.single_file is None:
        raise CheckpointError(f"{path}: the {name} cannot be read from a single file (pass its folder)")
    return comp.single_file(path, config, dict(hints or {}))


def check_fit(src: Source) -> None:
    """A CheckpointError naming every missing, unexpected and misshaped key of ``src`` against the model its
    config builds (on ``meta``; nothing is read)."""
    with torch.device("meta"):
        model = component(src.name).model_cls(src.config)
    check_keys(model, src.tensors, src.what)


def load(
    src: Source | str | os.PathLike,
    name: str | None = None,
    *,
    dtype: torch.dtype = torch.bfloat16,
    device: torch.device | str = "cpu",
    config: Any = None,
    fp8: str = "dequantize",
) -> nn.Module:
    """The component of ``src`` (a :class:`Source`, or a path and ``name``) in ``dtype`` (fp32 islands kept) on
    ``device``, loaded strictly and leanly. ``fp8``: "dequantize" (fp8 × scale, then ``dtype``) or "keep"
    (where the component supports it, block linears stored in fp8 stay fp8 in memory)."""
    if fp8 not in ("dequantize", "keep"):
        raise ValueError(f"fp8={fp8!r} must be 'dequantize' or 'keep'")
    if not isinstance(src, Source):
        if name is None:
            raise ValueError("load(path) needs the component name")
        src = open_component(src, name, config)
    if src.describe:
        log.info("%s: %s", src.where, src.describe)
    comp = component(src.name)
    with torch.device("meta"):
        model = comp.model_cls(src.config)
    cast_params(model, dtype, comp.keep_fp32)
    convert = src.prepare(model, src) if fp8 == "keep" and src.prepare is not None else src.convert
    load_into(model, src.tensors, what=src.what, convert=convert, device=device)
    return model.eval()


__all__ = [
    "COMPONENTS",
    "MODEL_INDEX",
    "NAMES",
    "NATIVE_INDEX",
    "Component",
    "Source",
    "check_fit",
    "component",
    "component_folder",
    "load",
    "open_component",
    "read_diffusers",
    "read_json",
    "write_diffusers",
]
