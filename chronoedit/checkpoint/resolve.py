"""Where a checkpoint's parts are: a local folder (diffusers layout, native, or loose files recognised by their
keys — :mod:`chronoedit.checkpoint.loose`), or a Hub repo id fetched with ``huggingface_hub.snapshot_download`` —
only the files the wanted components need, through the Hub cache, and from the cache alone when offline
(``HF_HUB_OFFLINE=1``, as huggingface_hub itself reads it) or when ``local_files_only``. Per-component ``files``
(``{"dit": FILE, "tokenizer": FOLDER}``) replace what the checkpoint holds, or make up a checkpoint on their own.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chronoedit.checkpoint.errors import CheckpointError
from chronoedit.checkpoint.loose import RELEASED_SAMPLER, check_overrides, scan_folder
from chronoedit.checkpoint.native import COMPONENTS, INDEX, NativeCheckpoint, load_native_config
from chronoedit.checkpoint.registry import COMPONENTS as REGISTRY
from chronoedit.checkpoint.scheduler import sampler_defaults

log = logging.getLogger(__name__)

MODEL_INDEX = "model_index.json"
EXTRA_FOLDERS = ("tokenizer", "image_processor", "scheduler")
# diffusers "variants" and non-safetensors weights are never needed
IGNORE = [
    "*.fp16.*",
    "*.fp16-*",
    "*.bf16.*",
    "*.bf16-*",
    "*.bin",
    "*.pth",
    "*.pt",
    "*.ckpt",
    "*.msgpack",
    "*.h5",
    "*.onnx*",
]


@dataclass
class CheckpointInfo:
    """A resolved checkpoint: where each part is. Pass the component paths to ``load_dit``, ``load_vae``,
    ``load_text_encoder``, ``load_image_encoder``; the folders to ``Tokenizer.from_folder`` /
    ``ImagePreprocessor.from_folder``; ``sampler()`` gives the scheduler's defaults."""

    kind: str  # "diffusers", "native", "loose" (a folder of files) or "files" (per-component files only)
    root: Path
    source: str  # what was asked for: a path or a Hub repo id
    components: dict[str, Path] = field(default_factory=dict)  # "dit" / "vae" / ... -> folder or file
    folders: dict[str, Path] = field(default_factory=dict)  # "tokenizer" / "image_processor" / "scheduler"
    loras: list[Path] = field(default_factory=list)  # LoRA files shipped with the checkpoint (e.g. distill)
    native: NativeCheckpoint | None = None
    embedded_tokenizer: Path | None = None  # the text encoder file holding the tokenizer (no tokenizer folder)
    defaults: list[str] = field(default_factory=list)  # what comes from the released model's built-in defaults

    @property
    def dit(self) -> Path | None:
        return self.components.get("dit")

    @property
    def vae(self) -> Path | None:
        return self.components.get("vae")

    @property
    def text_encoder(self) -> Path | None:
        return self.components.get("text_encoder")

    @property
    def image_encoder(self) -> Path | None:
        return self.components.get("image_encoder")

    @property
    def tokenizer(self) -> Path | None:
        return self.folders.get("tokenizer")

    @property
    def image_processor(self) -> Path | None:
        return self.folders.get("image_processor")

    def sampler(self) -> dict[str, Any] | None:
        """The scheduler config's sampler defaults (see :func:`sampler_defaults`); the released model's for loose
        files; None for another checkpoint without a scheduler."""
        if "scheduler" in self.folders:
            return sampler_defaults(self.folders["scheduler"])
        return dict(RELEASED_SAMPLER) if self.kind in ("loose", "files") else None


def _diffusers_info(root: Path, source: str, wanted: Sequence[str]) -> CheckpointInfo:
    index_path = root / MODEL_INDEX
    try:
        index = json.loads(index_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{index_path}: cannot read ({e})") from e
    info = CheckpointInfo("diffusers", root, source)
    missing = []
    for name in wanted:
        folder = root / REGISTRY[name].folder
        if REGISTRY[name].folder not in index or not (folder / "config.json").is_file():
            missing.append(f"{REGISTRY[name].folder}/")
        info.components[name] = folder
    for extra in [*(e for n in wanted for e in REGISTRY[n].needs), "scheduler"]:
        if (root / extra).is_dir():
            info.folders[extra] = root / extra
        elif extra in index:
            missing.append(f"{extra}/")
    if missing:
        raise CheckpointError(
            f"{root}: missing components of the diffusers checkpoint: {', '.join(sorted(set(missing)))}"
        )
    info.loras = sorted((root / "lora").glob("*.safetensors"))
    return info


def _native_info(root: Path, source: str, wanted: Sequence[str]) -> CheckpointInfo:
    native = load_native_config(root)
    absent = [n for n in wanted if n not in native.files]
    absent += [e for n in wanted for e in REGISTRY[n].needs if e not in native.folders]
    if absent:
        raise CheckpointError(f"{root}: missing components of the native checkpoint: {', '.join(absent)}")
    info = CheckpointInfo("native", root, source, native=native)
    info.components = {n: native.path(n) for n in wanted}
    info.folders = {n: native.folder(n) for n in native.folders}
    info.loras = [root / p for p in native.loras]
    return info


def _loose_info(root: Path | None, source: str, wanted: Sequence[str]) -> CheckpointInfo:
    info = CheckpointInfo("loose" if root is not None else "files", root or Path(), source)
    if root is not None:
        found, info.loras = scan_folder(root)
        info.components = {n: p for n, p in found.items() if n in wanted}
        for extra in EXTRA_FOLDERS:
            if (root / extra).is_dir():
                info.folders[extra] = root / extra
    return info


def _complete(info: CheckpointInfo, wanted: Sequence[str]) -> None:
    """Every wanted component found, the tokenizer located, the built-in defaults noted (before any read)."""
    from chronoedit.checkpoint.encoders import SPIECE_KEY
    from chronoedit.checkpoint.safetensors_io import SafetensorsFile

    where = info.root if info.kind == "loose" else "components"
    missing = [n for n in wanted if n not in info.components]
    if missing:
        raise CheckpointError(
            f"{where}: no {', '.join(missing)} file among the given files; pass "
            + " ".join(f"components.{n}=<file>" for n in missing)
        )
    te = info.components.get("text_encoder")
    if te is not None and "tokenizer" not in info.folders:
        if te.is_file() and te.suffix == ".safetensors" and SPIECE_KEY in SafetensorsFile(te):
            info.embedded_tokenizer = te
        else:
            raise CheckpointError(
                f"{te}: no tokenizer embedded ({SPIECE_KEY}) and none given; pass components.tokenizer=<folder with "
                "tokenizer.json or spiece.model> (the released model's tokenizer/)"
            )
    if "image_encoder" in wanted and "image_processor" not in info.folders:
        info.defaults.append("CLIP image preprocessing")
    if "scheduler" not in info.folders and info.kind in ("loose", "files"):
        info.defaults.append(f"UniPC scheduler (shift {RELEASED_SAMPLER['shift']})")


def _download(repo_id: str, patterns: list[str], **kwargs: Any) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, ignore_patterns=IGNORE, **kwargs))
    except Exception as e:  # offline without a cached copy, unknown repo, gated repo, network errors
        raise CheckpointError(
            f"{repo_id}: cannot get {patterns} from the Hub or its cache ({type(e).__name__}: {e})"
        ) from e


def resolve_checkpoint(
    source: str | os.PathLike,
    *,
    components: Sequence[str] = COMPONENTS,
    loras: bool = True,
    cache_dir: str | os.PathLike | None = None,
    revision: str | None = None,
    local_files_only: bool = False,
    files: Mapping[str, str | os.PathLike] | None = None,
) -> CheckpointInfo:
    """Resolve ``source`` (a local folder or an ``org/name`` Hub id; None or "" with ``files`` alone) to a
    :class:`CheckpointInfo` with the ``components`` asked for (and ``loras`` shipped in ``lora/`` if asked), the
    per-component ``files`` (component or extra folder -> path) replacing the checkpoint's. Missing parts raise
    naming them."""
    unknown = [c for c in components if c not in COMPONENTS]
    if unknown:
        raise ValueError(f"unknown components {unknown}; known: {COMPONENTS}")
    given = check_overrides(files or {}, (*COMPONENTS, "tokenizer", "image_processor"))
    from_source = [c for c in components if c not in given]
    if not source:
        info = _loose_info(None, "", components)
        _override(info, given, components)
        _complete(info, components)
        return info
    info = _resolve_source(source, from_source, loras, cache_dir, revision, local_files_only)
    if info.kind == "diffusers" and given:  # a replaced component still uses the pipeline's extra folders
        for extra in EXTRA_FOLDERS:
            if (info.root / extra).is_dir():
                info.folders.setdefault(extra, info.root / extra)
    _override(info, given, components)
    if info.kind == "loose" or given:
        _complete(info, components)
    return info


def _override(info: CheckpointInfo, given: Mapping[str, Path], components: Sequence[str]) -> None:
    for name, path in given.items():
        if name in COMPONENTS:
            if name in components:
                info.components[name] = path
        else:
            info.folders[name] = path
    if given:
        info.source = f"{info.source}{' + ' if info.source else ''}" + ", ".join(
            f"components.{k}={v}" for k, v in given.items()
        )


def _resolve_source(
    source: str | os.PathLike,
    components: Sequence[str],
    loras: bool,
    cache_dir: str | os.PathLike | None,
    revision: str | None,
    local_files_only: bool,
) -> CheckpointInfo:
    path = Path(source)
    if not path.exists():
        if str(source).count("/") != 1 or str(source).startswith(("/", ".")):
            raise CheckpointError(f"{source}: no such folder, and not an 'org/name' Hub repo id")
        hub = dict(cache_dir=cache_dir, revision=revision, local_files_only=local_files_only)
        path = _download(str(source), [MODEL_INDEX, INDEX], **hub)
        if (path / MODEL_INDEX).is_file():
            patterns = [f"{REGISTRY[c].folder}/*" for c in components]
        else:
            patterns = [INDEX, *(f"{c}.safetensors" for c in components)]
        patterns += [f"{e}/*" for c in components for e in REGISTRY[c].needs] + ["scheduler/*"]
        patterns += ["lora/*.safetensors"] if loras else []
        path = _download(str(source), patterns, **hub)
        log.info("%s: resolved to %s", source, path)
    if (path / MODEL_INDEX).is_file():
        info = _diffusers_info(path, str(source), components)
    elif (path / INDEX).is_file():
        info = _native_info(path, str(source), components)
    elif path.is_dir():
        info = _loose_info(path, str(source), components)
    else:
        raise CheckpointError(f"{path}: not a folder (a diffusers pipeline, a native checkpoint or loose files)")
    if not loras:
        info.loras = []
    return info


__all__ = ["CheckpointInfo", "resolve_checkpoint"]
