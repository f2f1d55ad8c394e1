"""Typed configuration of an edit job, mirrored by ``configs/edit.yaml`` (which states only what differs from
these defaults) and the groups ``configs/model/``, ``configs/sampler/``. The edit's own settings take their
defaults from :class:`~chronoedit.pipeline.pipeline.EditRequest`, so the two cannot disagree."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from chronoedit.models.spec import MODEL_PRESETS, ModelSpec
from chronoedit.pipeline.pipeline import EditRequest
from chronoedit.runtime import RuntimeConfig
from chronoedit.sampling import SamplerConfig

DEFAULT_PROMPT = "Add a red hot-air balloon floating in the sky above the house"


@dataclass
class LoraSpec:
    path: str = "???"  # a LoRA .safetensors file (PEFT/diffusers, Wan original, kohya/musubi or DiffSynth naming)
    scale: float = 1.0  # strength: the LoRA's ΔW is multiplied by this
    fuse: bool = True  # fuse into the weights (fast) or keep as a runtime adapter (switchable)


@dataclass
class ReasoningConfig:
    # k: the first k steps denoise num_frames frames (the reasoning video), then only the input and the edit
    # are kept. 0 = plain 5-frame editing; k >= sampler.steps = never drop (the whole video is decoded).
    steps: int = EditRequest.reasoning_steps


@dataclass
class EditConfig:
    checkpoint: str = "tiny"  # "tiny" (no weights: random ones), a diffusers-layout or native folder, or a Hub id
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
    lora: list[LoraSpec] = field(default_factory=list)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    batch: str | None = None  # a JSONL file of {"image", "prompt", "seed"?, "negative_prompt"?} rows
    output_dir: str | None = None  # None: Hydra's run directory (outputs/<date>/<time>, or the multirun job's)
    overwrite: bool = False  # allow writing into a non-empty output_dir
    save_frames: bool = False  # frames/0000.png …
    save_latents: bool = False  # latents.safetensors (key "latents"), normalised, (B, 16, T, h, w)
    fps: int = 8  # of the reasoning video (the release scripts export at 8)
