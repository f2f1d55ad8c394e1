"""Typed configuration of an edit job, mirrored by ``configs/edit.yaml`` (which states only what differs from
these defaults) and the groups ``configs/model/``, ``configs/sampler/``. The edit's own settings take their
defaults from :class:`~chronoedit.pipeline.pipeline.EditRequest`, so the two cannot disagree."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from chronoedit.models.spec import MODEL_PRESETS, ModelSpec
from chronoedit.parallel.config import ParallelConfig
from chronoedit.pipeline.pipeline import EditRequest
from chronoedit.runtime import RuntimeConfig
from chronoedit.sampling import SamplerConfig

DEFAULT_PROMPT = "Add a red hot-air balloon floating in the sky above the house"


@dataclass
class LoraSpec:
    path: str = "???"  # a LoRA .safetensors file (PEFT/diffusers, Wan original, kohya/musubi or DiffSynth naming)
    scale: float = 1.0  # strength: the LoRA's ΔW is multiplied by this
    fuse: bool = True  # fuse into the weights (fast) or keep as a runtime adapter (switchable)


def lora_spec(entry: Any) -> LoraSpec:
    """One ``lora`` list entry as a :class:`LoraSpec`: a bare path (scale 1, fused), a ``{path, scale, fuse}``
    mapping, or a LoraSpec. Anything else is a one-line ValueError."""
    if isinstance(entry, LoraSpec):
        return entry
    if isinstance(entry, str) and entry:
        return LoraSpec(path=entry)
    if isinstance(entry, Mapping):
        known = {f.name for f in fields(LoraSpec)}
        unknown = sorted(str(k) for k in entry if k not in known)
        if unknown or "path" not in entry:
            raise ValueError(f"lora entry {dict(entry)}: needs 'path' (optional 'scale', 'fuse'); unknown: {unknown}")
        path, scale, fuse = entry["path"], entry.get("scale", 1.0), entry.get("fuse", True)
        if not isinstance(path, str) or not isinstance(scale, (int, float)) or not isinstance(fuse, bool):
            raise ValueError(f"lora entry {dict(entry)}: path must be a string, scale a number, fuse true/false")
        return LoraSpec(path=path, scale=float(scale), fuse=fuse)
    raise ValueError(f"lora entry {entry!r}: expected a file path or {{path, scale, fuse}}")


@dataclass
class ComponentFiles:
    """Per-component files or folders that replace what ``checkpoint`` holds (any format each component reads;
    None: from the checkpoint, or the released model's built-in defaults for what a loose set does not ship)."""

    dit: str | None = None
    vae: str | None = None
    text_encoder: str | None = None
    image_encoder: str | None = None
    tokenizer: str | None = None  # a tokenizer/ folder (tokenizer.json or spiece.model)
    image_processor: str | None = None  # an image_processor/ folder or preprocessor_config.json

    def given(self) -> dict[str, str]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name)}


@dataclass
class ReasoningConfig:
    # k: the first k steps denoise num_frames frames (the reasoning video), then only the input and the edit
    # are kept. 0 = plain 5-frame editing; k >= sampler.steps = never drop (the whole video is decoded).
    steps: int = EditRequest.reasoning_steps


@dataclass
class EditConfig:
    # "toy" (ChronoEdit-Toy, shipped; configs/edit.yaml's default), "tiny" (no weights: random ones), a
    # diffusers-layout or native folder, or a Hub id
    checkpoint: str = "tiny"
    # the architecture (group configs/model/); with a checkpoint, the fields given explicitly replace its own
    model: ModelSpec = field(default_factory=lambda: copy.deepcopy(MODEL_PRESETS["tiny"]))
    init: str = "auto"  # auto | random | checkpoint (auto: random for checkpoint=tiny, else the checkpoint's)
    init_seed: int = 0  # weights of init=random
    image: str | None = None  # None: the example image shipped in chronoedit/assets
    prompt: str = DEFAULT_PROMPT
    negative_prompt: str = EditRequest.negative_prompt
    seed: int = EditRequest.seed
    guidance_scale: float = EditRequest.guidance_scale  # CFG when > 1 (1.0 with the distillation LoRA)
    num_frames: int = EditRequest.num_frames  # video frames while reasoning (4k+1); plain editing always uses 5
    height: int | None = None  # both or neither, multiples of 16; default: from max_area
    width: int | None = None
    max_area: int | None = None  # None: the checkpoint's default (720×1280; small for the tiny demo)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    reasoning: ReasoningConfig = field(default_factory=ReasoningConfig)
    # LoRAs: each a bare path (scale 1) or {path, scale, fuse}; typed Any so that both parse, normalised below
    lora: list[Any] = field(default_factory=list)
    components: ComponentFiles = field(default_factory=ComponentFiles)  # per-component files (see ComponentFiles)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)  # torchrun: ulysses·ring·cfg·dp processes
    batch: str | None = None  # a JSONL file of {"image", "prompt", "seed"?, "negative_prompt"?} rows
    output_dir: str | None = None  # None: Hydra's run directory (outputs/<date>/<time>, or the multirun job's)
    overwrite: bool = False  # allow writing into a non-empty output_dir
    save_frames: bool = False  # frames/0000.png …
    save_latents: bool = False  # latents.safetensors (key "latents"), normalised, (B, 16, T, h, w)
    fps: int = 8  # of the reasoning video (the release scripts export at 8)

    def __post_init__(self) -> None:
        from chronoedit.checkpoint.architecture import named_checkpoint

        self.checkpoint = named_checkpoint(self.checkpoint)
        self.lora = [lora_spec(e) for e in self.lora]
