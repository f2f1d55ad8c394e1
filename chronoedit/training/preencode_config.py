"""Typed configuration of the pre-encoding tool (``train/preencode.py``), mirrored by ``configs/preencode.yaml``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class PreencodeConfig:
    dataset: str = "???"  # a folder with metadata.jsonl (or metadata.csv): input, output (image or video), prompt
    output: str = "???"  # the cache folder to write (train with data.cache=<this folder>)
    checkpoint: str = "tiny"  # the encoders: "tiny" (the demo components) or a ChronoEdit-14B-Diffusers folder
    tiny_seed: int = 0  # weights of the tiny components (must match model.seed of the training run)
    height: int = 480  # training resolution (multiples of 16); images are resized to cover it, then centre-cropped
    width: int = 832
    clip_frames: int = 25  # frames taken from a video-prior clip before its edited (last) frame; 4k+1
    device: str = "auto"  # auto = cuda if available, else cpu
    dtype: str = "auto"  # encoders and stored tensors: auto = bfloat16 on cuda, float32 on cpu
    limit: int | None = None  # encode only the first N rows
    overwrite: bool = False  # allow writing into a non-empty output folder

    def __post_init__(self) -> None:
        problems = []
        if self.height % 16 or self.width % 16 or self.height <= 0 or self.width <= 0:
            problems.append(f"height={self.height}, width={self.width} must be positive multiples of 16")
        if self.clip_frames < 5 or (self.clip_frames - 1) % 4:
            problems.append(f"clip_frames={self.clip_frames} must be 4k+1 and >= 5 (25: 8 latent frames)")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            problems.append(f"dtype={self.dtype!r} must be auto, float32, bfloat16 or float16")
        if self.limit is not None and self.limit < 1:
            problems.append(f"limit={self.limit} must be >= 1")
        if problems:
            raise ValueError("invalid preencode config: " + "; ".join(problems))
