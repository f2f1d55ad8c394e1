"""Where a checkpoint's parts are: a local folder (diffusers layout or native), or a Hub repo id fetched with
``huggingface_hub.snapshot_download`` — only the files the wanted components need, through the Hub cache, and
from the cache alone when offline (``HF_HUB_OFFLINE=1``, as huggingface_hub itself reads it) or when
``local_files_only``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chronoedit.checkpoint.errors import CheckpointError
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

    kind: str  # "diffusers" or "native"
    root: Path
    source: str  # what was asked for: a path or a Hub repo id
    components: dict[str, Path] = field(default_factory=dict)  # "dit" / "vae" / ... -> folder or file
    folders: dict[str, Path] = field(default_factory=dict)  # "tokenizer" / "image_processor" / "scheduler"
    loras: list[Path] = field(default_factory=list)  # LoRA files shipped with the checkpoint (e.g. distill)
    native: NativeCheckpoint | None = None

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
        """The scheduler config's sampler defaults (see :func:`sampler_defaults`); None without a scheduler."""
        return sampler_defaults(self.folders["scheduler"]) if "scheduler" in self.folders else None


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
) -> CheckpointInfo:
    """Resolve ``source`` (a local folder or an ``org/name`` Hub id) to a :class:`CheckpointInfo` with the
    ``components`` asked for (and ``loras`` shipped in ``lora/`` if asked). Missing parts raise naming them."""
    unknown = [c for c in components if c not in COMPONENTS]
    if unknown:
        raise ValueError(f"unknown components {unknown}; known: {COMPONENTS}")
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
    else:
        raise CheckpointError(f"{path}: neither a diffusers pipeline folder ({MODEL_INDEX}) nor a native one ({INDEX})")
    if not loras:
        info.loras = []
    return info


__all__ = ["CheckpointInfo", "resolve_checkpoint"]
