"""The native checkpoint format: one folder, one safetensors file per component under our parameter names, our
configs as YAML.

    chronoedit.yaml          format/version, source, dtype, and per component: file, class, config
    dit.safetensors          ChronoEditDiT    (each file also carries its config as JSON in its metadata,
    vae.safetensors          WanVAE            so a single file is self-describing)
    text_encoder.safetensors UMT5Encoder
    image_encoder.safetensors CLIPVisionTower (the blocks it runs: the checkpoint's last block is not kept)
    tokenizer/ image_processor/ scheduler/ lora/   copied as they are

``chronoedit.yaml`` is written last, so an interrupted conversion never looks like a checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from chronoedit.checkpoint.errors import CheckpointError
from chronoedit.checkpoint.load import TensorLike, check_keys, materialize, open_safetensors
from chronoedit.checkpoint.registry import NAMES as COMPONENTS
from chronoedit.checkpoint.registry import NATIVE_INDEX as INDEX
from chronoedit.checkpoint.registry import Source, component, load
from chronoedit.checkpoint.safetensors_io import SafetensorsFile
from chronoedit.checkpoint.writer import pending, write_safetensors
from chronoedit.files import write_text

FORMAT = "chronoedit-native"
VERSION = 1
CONFIG_METADATA_KEY = "chronoedit_config"
COMPONENT_METADATA_KEY = "chronoedit_component"
FOLDERS = ("tokenizer", "image_processor", "scheduler")
# How-to-run fields that configs of earlier versions carried; they are runtime.* settings now, so skipped here.
RUNTIME_FIELDS = frozenset({"attn_backend", "tile", "tile_size", "tile_overlap", "strip_rows"})


# ---------------------------------------------------------------------------------------------- configs


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A config dataclass as plain YAML/JSON values (tuples as lists)."""

    def plain(v):
        return [plain(x) for x in v] if isinstance(v, (tuple, list)) else v

    return {f.name: plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}


def config_from_dict(cls: type, values: Mapping[str, Any], where: str) -> Any:
    """``cls(**values)``; unknown or invalid fields are a CheckpointError naming ``where``."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in values.items() if k not in RUNTIME_FIELDS}
    unknown = sorted(set(values) - names)
    if unknown:
        raise CheckpointError(f"{where}: unknown {cls.__name__} fields {unknown}")
    try:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: invalid {cls.__name__}: {e}") from e


def file_config(path: str | os.PathLike) -> tuple[str, Any] | None:
    """(component, config) of a native ``.safetensors`` file from its metadata; None for other files."""
    meta = SafetensorsFile(path).metadata
    if COMPONENT_METADATA_KEY not in meta or CONFIG_METADATA_KEY not in meta:
        return None
    name = meta[COMPONENT_METADATA_KEY]
    try:
        values = json.loads(meta[CONFIG_METADATA_KEY])
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: corrupt {CONFIG_METADATA_KEY} metadata ({e})") from e
    if name not in COMPONENTS:
        raise CheckpointError(f"{path}: unknown component {name!r} in its metadata")
    return name, config_from_dict(component(name).config_cls, values, str(path))


@dataclass
class NativeCheckpoint:
    """What ``chronoedit.yaml`` says: per component its config and file; the copied folders; the LoRAs."""

    root: Path
    configs: dict[str, Any] = field(default_factory=dict)  # component -> config dataclass
    files: dict[str, str] = field(default_factory=dict)  # component -> file name in root
    dtype: str | None = None  # what the weights were cast to at conversion (None: as the source stored them)
    source: str = ""
    folders: dict[str, str] = field(default_factory=dict)  # "tokenizer" / "image_processor" / "scheduler"
    loras: list[str] = field(default_factory=list)  # LoRA files shipped with the checkpoint, relative to root

    @property
    def dit(self):
        return self.configs.get("dit")

    def path(self, component: str) -> Path | None:
        return self.root / self.files[component] if component in self.files else None

    def folder(self, name: str) -> Path | None:
        return self.root / self.folders[name] if name in self.folders else None


def load_native_config(folder: str | os.PathLike) -> NativeCheckpoint:
    """Read and check ``chronoedit.yaml`` (format, version, configs, that every named file exists)."""
    root = Path(folder)
    index = root / INDEX
    try:
        doc = yaml.safe_load(index.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise CheckpointError(f"{index}: cannot read the native checkpoint index ({e})") from e
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CheckpointError(
            f"{index}: not a {FORMAT} index (format: {doc.get('format') if isinstance(doc, dict) else doc!r})"
        )
    if doc.get("version") != VERSION:
        raise CheckpointError(f"{index}: version {doc.get('version')!r}; this code reads version {VERSION}")
    unknown = sorted(set(doc) - {"format", "version", "source", "dtype", "components", *FOLDERS, "lora"})
    unknown += sorted(set(doc.get("components") or {}) - set(COMPONENTS))
    if unknown:
        raise CheckpointError(f"{index}: unknown entries {unknown}")
    out = NativeCheckpoint(
        root, dtype=doc.get("dtype"), source=doc.get("source", ""), loras=list(doc.get("lora") or [])
    )
    missing = []
    for name, entry in (doc.get("components") or {}).items():
        cls = component(name).config_cls
        out.configs[name] = config_from_dict(cls, entry.get("config") or {}, f"{index} [{name}]")
        out.files[name] = entry["file"]
        if not (root / entry["file"]).is_file():
            missing.append(entry["file"])
    for name in FOLDERS:
        if doc.get(name):
            out.folders[name] = doc[name]
            if not (root / doc[name]).is_dir():
                missing.append(doc[name] + "/")
    missing += [p for p in out.loras if not (root / p).is_file()]
    if missing:
        raise CheckpointError(f"{index}: files named in the index are missing: {', '.join(missing)}")
    return out


# ---------------------------------------------------------------------------------------------- writing


def check_output_folder(folder: Path, overwrite: bool) -> None:
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{folder} exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise FileExistsError(f"{folder} exists and is not empty (pass overwrite=True / --overwrite)")


def _dequantizer(scale: TensorLike | None) -> Callable[[torch.Tensor], torch.Tensor]:
    from chronoedit.checkpoint.fp8 import dequantize

    return lambda x: dequantize(x, None if scale is None else materialize(scale))


def write_component(
    name: str,
    cfg: Any,
    tensors: Mapping[str, TensorLike],
    path: str | os.PathLike,
    *,
    dtype: torch.dtype | None = None,
    fp8_scales: Mapping[str, TensorLike] | None = None,
) -> Path:
    """Check ``tensors`` (our names) against the component built from ``cfg`` on ``meta`` (every missing,
    unexpected, misshaped key named), then stream them to ``path``: floating tensors cast to ``dtype`` except
    the component's fp32 islands, which keep their stored dtype. Tensors stored in fp8 are dequantised (times
    their ``fp8_scales`` entry, if any) to ``dtype`` (fp32 when None or for an island)."""
    from chronoedit.checkpoint.fp8 import FP8_DTYPES

    comp = component(name)
    if not isinstance(cfg, comp.config_cls):
        raise TypeError(f"{name}: config is {type(cfg).__name__}, expected {comp.config_cls.__name__}")
    with torch.device("meta"):
        model = comp.model_cls(cfg)
    check_keys(model, tensors, f"{name} ({path})")
    keep = comp.keep_fp32
    scales = fp8_scales or {}
    entries = {}
    for key in model.state_dict():  # the model's order
        t = tensors[key]
        island = keep is not None and keep(key)
        if t.dtype in FP8_DTYPES:
            target = torch.float32 if island or dtype is None else dtype
            entries[key] = pending(t, target, _dequantizer(scales.get(key)))
        else:
            entries[key] = pending(t, dtype if dtype is not None and t.dtype.is_floating_point and not island else None)
    meta = {"format": "pt", COMPONENT_METADATA_KEY: name, CONFIG_METADATA_KEY: json.dumps(config_to_dict(cfg))}
    return write_safetensors(entries, path, meta)


def save_native(
    folder: str | os.PathLike,
    components: Mapping[str, tuple[Any, Mapping[str, TensorLike]] | nn.Module],
    *,
    dtype: torch.dtype | None = None,
    fp8_scales: Mapping[str, Mapping[str, TensorLike]] | None = None,
    folders: Mapping[str, str | os.PathLike] | None = None,
    loras: Sequence[str | os.PathLike] = (),
    source: str = "",
    overwrite: bool = False,
) -> Path:
    """Write a native checkpoint. ``components``: name -> (config, tensors under our names) or a model with a
    ``cfg``. ``dtype``: cast floating weights (fp32 islands kept); ``fp8_scales``: per component, the scales of
    fp8-stored weights (dequantised on the way). ``folders``: "tokenizer" / "image_processor" / "scheduler"
    folders to copy; ``loras``: files copied into ``lora/``. Refuses a non-empty ``folder`` unless
    ``overwrite``."""
    root = Path(folder)
    check_output_folder(root, overwrite)
    root.mkdir(parents=True, exist_ok=True)
    (root / INDEX).unlink(missing_ok=True)
    entries = {}
    for name, item in components.items():
        cfg, tensors = (item.cfg, item.state_dict()) if isinstance(item, nn.Module) else item
        scales = (fp8_scales or {}).get(name)
        write_component(name, cfg, tensors, root / f"{name}.safetensors", dtype=dtype, fp8_scales=scales)
        entries[name] = {"file": f"{name}.safetensors", "class": component(name).model_cls.__name__}
        entries[name]["config"] = config_to_dict(cfg)
    doc: dict[str, Any] = {"format": FORMAT, "version": VERSION, "source": source}
    doc["dtype"] = None if dtype is None else str(dtype).removeprefix("torch.")
    doc["components"] = entries
    for name, src in (folders or {}).items():
        if name not in FOLDERS:
            raise ValueError(f"unknown folder {name!r}; known: {FOLDERS}")
        shutil.copytree(src, root / name, dirs_exist_ok=True)
        doc[name] = name
    if loras:
        (root / "lora").mkdir(exist_ok=True)
        doc["lora"] = []
        for p in loras:
            shutil.copy2(p, root / "lora" / Path(p).name)
            doc["lora"].append(f"lora/{Path(p).name}")
    write_text(root / INDEX, yaml.safe_dump(doc, sort_keys=False))  # last and atomic: marks the checkpoint whole
    return root


# ---------------------------------------------------------------------------------------------- loading


def native_source(path: str | os.PathLike, name: str, config: Any = None) -> Source:
    """Component ``name`` of a native folder or file (headers only); ``config`` replaces the stored one."""
    path = Path(path)
    if path.is_dir():
        native = load_native_config(path)
        if name not in native.files:
            raise CheckpointError(f"{path}: this native checkpoint has no {name!r} (has {sorted(native.files)})")
        path = native.path(name)
    found = file_config(path)
    if found is None and config is None:
        raise CheckpointError(f"{path}: not a native component file (no {CONFIG_METADATA_KEY} metadata)")
    if found is not None and found[0] != name:
        raise CheckpointError(f"{path}: holds the {found[0]}, not the {name}")
    cfg = config if config is not None else found[1]
    return Source(name, path, cfg, open_safetensors(path), describe="native")


def load_component(
    path: str | os.PathLike,
    name: str | None = None,
    *,
    dtype: torch.dtype = torch.bfloat16,
    device: torch.device | str = "cpu",
    config: Any = None,
) -> nn.Module:
    """A component from a native folder (``name`` required) or a native ``.safetensors`` file (its metadata
    names it), strictly and leanly."""
    if name is None:
        found = file_config(path)
        if found is None:
            raise CheckpointError(f"{path}: not a native component file (no {CONFIG_METADATA_KEY} metadata)")
        name = found[0]
    return load(native_source(path, name, config), dtype=dtype, device=device)


__all__ = [
    "COMPONENTS",
    "FORMAT",
    "INDEX",
    "NativeCheckpoint",
    "check_output_folder",
    "config_from_dict",
    "config_to_dict",
    "file_config",
    "load_component",
    "load_native_config",
    "native_source",
    "save_native",
    "write_component",
]
