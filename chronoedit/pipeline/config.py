"""Typed configuration of an edit job, mirrored one-to-one by ``configs/edit.yaml`` (and ``configs/sampler/``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from chronoedit.pipeline.pipeline import DEFAULT_NEGATIVE_PROMPT
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
    steps: int = 0


@dataclass
class EditConfig:
    checkpoint: str = "tiny"  # "tiny" (built-in random demo), a diffusers-layout or native folder, or a Hub id
    image: str | None = None  # None: the example image shipped in chronoedit/assets
    prompt: str = DEFAULT_PROMPT
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    seed: int = 42
    guidance_scale: float = 5.0  # CFG when > 1 (1.0 with the distillation LoRA)
    num_frames: int = 29  # video frames while reasoning (4k+1); plain editing always uses 5
    height: int | None = None  # both or neither, multiples of 16; default: from max_area
    width: int | None = None
    max_area: int | None = None  # None: the checkpoint's default (720×1280; small for the tiny demo)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    reasoning: ReasoningConfig = field(default_factory=ReasoningConfig)
    lora: list[LoraSpec] = field(default_factory=list)
    device: str = "auto"  # auto = cuda if available, else cpu
    dtype: str = "auto"  # DiT/UMT5/VAE dtype: auto = bfloat16 on cuda, float32 on cpu; or float32/bfloat16/float16
    offload: bool = False  # keep models on the CPU, move each to the device only for its stage
    cfg_batched: bool = False  # conditional + unconditional DiT passes as one doubled batch
    vae_tiling: bool = False  # encode/decode in overlapping spatial tiles (bounded memory at high resolution)
    batch: str | None = None  # a JSONL file of {"image", "prompt", "seed"?, "negative_prompt"?} rows
    output_dir: str | None = None  # None: Hydra's run directory (outputs/<date>/<time>, or the multirun job's)
    overwrite: bool = False  # allow writing into a non-empty output_dir
    save_frames: bool = False  # frames/0000.png …
    save_latents: bool = False  # latents.safetensors (key "latents"), normalised, (B, 16, T, h, w)
    fps: int = 8  # of the reasoning video (the release scripts export at 8)
