"""Conversions between layouts, one tensor at a time (peak RAM: the largest tensor):

* diffusers pipeline (folder or Hub id) -> native, optionally cast (fp32 islands kept)
* native -> diffusers component folders (transformer/, vae/, text_encoder/ + tokenizer/, scheduler/,
  image_processor/, lora/); not the image encoder, whose unused last block native does not keep
* one-file DiT (Wan / ComfyUI naming, any prefix, fp8 dequantised), VAE (Wan2.1_VAE.pth) or UMT5 encoder
  (models_t5_umt5-xxl-enc-bf16.pth) -> native
* a folder of loose files (ComfyUI's set, recognised by their keys) and / or per-component files -> one complete
  native folder: fp8 dequantised, an embedded tokenizer written out as ``tokenizer/spiece.model``, and the
  released model's image processor and scheduler configs where the set ships none

diffusers -> native -> diffusers gives back the same tensors bit for bit (without a dtype cast).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from chronoedit.checkpoint.load import open_safetensors
from chronoedit.checkpoint.native import COMPONENTS, check_output_folder, load_native_config, save_native
from chronoedit.checkpoint.registry import COMPONENTS as REGISTRY
from chronoedit.checkpoint.registry import open_component, read_diffusers, write_diffusers
from chronoedit.checkpoint.resolve import resolve_checkpoint

log = logging.getLogger(__name__)


def diffusers_to_native(
    source: str | os.PathLike,
    dest: str | os.PathLike,
    *,
    dtype: torch.dtype | None = None,
    components: Sequence[str] = COMPONENTS,
    overwrite: bool = False,
    **hub: object,
) -> Path:
    """A diffusers checkpoint (folder or Hub id; ``hub``: ``cache_dir``, ``revision``, ``local_files_only``)
    written as a native one. Every component is checked against our model before anything is written."""
    check_output_folder(Path(dest), overwrite)
    info = resolve_checkpoint(source, components=components, **hub)
    sources = [read_diffusers(info.components[name], name) for name in components]
    parts = {src.name: (src.config, src.tensors) for src in sources}
    return save_native(
        dest, parts, dtype=dtype, folders=info.folders, loras=info.loras, source=str(source), overwrite=overwrite
    )


def native_to_diffusers(
    source: str | os.PathLike, dest: str | os.PathLike, *, max_shard_bytes: int = 0, overwrite: bool = False
) -> Path:
    """A native checkpoint written as diffusers component folders (``max_shard_bytes`` > 0 shards them). No
    ``model_index.json`` is written, since the image encoder cannot be rebuilt: copy ``image_encoder/`` and
    ``model_index.json`` from the original pipeline to make it a complete one."""
    native = load_native_config(source)
    dest = Path(dest)
    check_output_folder(dest, overwrite)
    for name in native.files:
        if REGISTRY[name].config_to_diffusers is None:
            log.warning("%s: the %s is not written (native keeps only the blocks it runs)", source, name)
            continue
        tensors = open_safetensors(native.path(name))
        write_diffusers(name, native.configs[name], tensors, dest / REGISTRY[name].folder, max_shard_bytes)
    for name in native.folders:
        shutil.copytree(native.folder(name), dest / name, dirs_exist_ok=True)
    for lora in native.loras:
        (dest / "lora").mkdir(exist_ok=True)
        shutil.copy2(native.root / lora, dest / "lora" / Path(lora).name)
    return dest


def single_file_to_native(
    source: str | os.PathLike,
    dest: str | os.PathLike,
    *,
    component: str = "dit",
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
    config: object = None,
    hints: Mapping[str, Any] | None = None,
) -> Path:
    """A one-file DiT (Wan naming, any prefix, fp8 with scales dequantised), VAE (``Wan2.1_VAE.pth``) or UMT5
    encoder (``models_t5_umt5-xxl-enc-bf16.pth``) as a native checkpoint holding that component. ``config``
    overrides the one inferred from the file; ``hints`` fill fields its shapes cannot tell (``{"num_heads": 12}``)."""
    check_output_folder(Path(dest), overwrite)
    if REGISTRY[component].single_file is None:
        raise ValueError(f"single-file conversion supports {[n for n, c in REGISTRY.items() if c.single_file]}, "
                         f"not {component!r}")  # fmt: skip
    src = open_component(source, component, config, hints)
    log.info("%s: %s", src.where, src.describe)
    return save_native(
        dest, {component: (src.config, src.tensors)}, dtype=dtype, fp8_scales={component: src.fp8_scales},
        source=str(source), overwrite=overwrite,
    )  # fmt: skip


def loose_to_native(
    source: str | os.PathLike | None,
    dest: str | os.PathLike,
    *,
    files: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
) -> Path:
    """Any checkpoint (``source``: a loose folder, a diffusers / native folder, or None) with per-component
    ``files`` replacing its parts, as one complete native folder. ``overrides``: ``model.*`` fields
    (``{"dit.num_heads": 12}``), needed where a single file's shapes cannot tell them."""
    from chronoedit.checkpoint.architecture import open_model
    from chronoedit.checkpoint.encoders import embedded_tokenizer
    from chronoedit.checkpoint.loose import released_image_processor

    check_output_folder(Path(dest), overwrite)
    sources, info = open_model(str(source or ""), overrides, files=files)
    with tempfile.TemporaryDirectory() as tmp:
        folders = dict(info.folders)
        if "tokenizer" not in folders and info.embedded_tokenizer is not None:
            (Path(tmp) / "tokenizer").mkdir()
            (Path(tmp) / "tokenizer" / "spiece.model").write_bytes(embedded_tokenizer(info.embedded_tokenizer))
            folders["tokenizer"] = Path(tmp) / "tokenizer"
        if "image_processor" not in folders:
            size = sources["image_encoder"].config.image_size
            folders["image_processor"] = _json_folder(tmp, "image_processor", "preprocessor_config.json",
                                                      {"image_processor_type": "CLIPImageProcessor",
                                                       **released_image_processor(size)})  # fmt: skip
        if "scheduler" not in folders:
            folders["scheduler"] = _json_folder(tmp, "scheduler", "scheduler_config.json", _released_scheduler())
        return save_native(
            dest, {n: (s.config, s.tensors) for n, s in sources.items()}, dtype=dtype,
            fp8_scales={n: s.fp8_scales for n, s in sources.items()}, folders=folders, loras=info.loras,
            source=info.source, overwrite=overwrite,
        )  # fmt: skip


def _released_scheduler() -> dict[str, Any]:
    """The released model's UniPC ``scheduler_config.json`` (what :data:`RELEASED_SAMPLER` is read from)."""
    from chronoedit.checkpoint.loose import RELEASED_SAMPLER as S

    return {
        "_class_name": "UniPCMultistepScheduler", "prediction_type": "flow_prediction", "use_flow_sigmas": True,
        "flow_shift": S["shift"], "solver_order": S["order"], "solver_type": S["solver_type"], "predict_x0": True,
        "lower_order_final": S["lower_order_final"], "final_sigmas_type": "zero",
        "num_train_timesteps": S["num_train_timesteps"],
    }  # fmt: skip


def _json_folder(tmp: str, name: str, file: str, content: dict[str, Any]) -> Path:
    folder = Path(tmp) / name
    folder.mkdir()
    (folder / file).write_text(json.dumps(content, indent=2))
    return folder


__all__ = ["diffusers_to_native", "loose_to_native", "native_to_diffusers", "single_file_to_native"]
