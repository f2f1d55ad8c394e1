"""Typed configuration of the pre-encoding tool (``train/preencode.py``), mirrored by ``configs/preencode.yaml``."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from chronoedit.models.spec import MODEL_PRESETS, ModelSpec
from chronoedit.runtime import RuntimeConfig


@dataclass
class PreencodeConfig:
    dataset: str = "???"  # a folder with metadata.jsonl (or metadata.csv): input, output (image or video), prompt
    output: str = "???"  # the cache folder to write (train with data.cache=<this folder>)
    checkpoint: str = "tiny"  # the encoders: "tiny" (random ones of `model`) or a ChronoEdit checkpoint
    model: ModelSpec = field(default_factory=lambda: copy.deepcopy(MODEL_PRESETS["tiny"]))  # group configs/model/
    init: str = "auto"  # auto | random | checkpoint, as in training
    init_seed: int = 0  # weights of init=random (the training run's init_seed)
    height: int = 480  # training resolution (multiples of 16); images are resized to cover it, then centre-cropped
    width: int = 832
    clip_frames: int = 25  # frames taken from a video-prior clip before its edited (last) frame; 4k+1
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)  # device, dtype (encoders and stored tensors)
    limit: int | None = None  # encode only the first N rows
    batch: int = 1  # rows encoded together (one VAE call per frame count): faster for small frames, more memory
    overwrite: bool = False  # allow writing into a non-empty output folder

    def __post_init__(self) -> None:
        from chronoedit.checkpoint.architecture import named_checkpoint

        self.checkpoint = named_checkpoint(self.checkpoint)
        problems = []
        if self.height % 16 or self.width % 16 or self.height <= 0 or self.width <= 0:
            problems.append(f"height={self.height}, width={self.width} must be positive multiples of 16")
        if self.clip_frames < 5 or (self.clip_frames - 1) % 4:
            problems.append(f"clip_frames={self.clip_frames} must be 4k+1 and >= 5 (25: 8 latent frames)")
        if self.batch < 1:
            problems.append(f"batch={self.batch} must be >= 1")
        if self.limit is not None and self.limit < 1:
            problems.append(f"limit={self.limit} must be >= 1")
        if problems:
            raise ValueError("invalid preencode config: " + "; ".join(problems))
