"""Typed configuration of ``infer/eval.py``: every key of an edit job (:class:`EditConfig`) plus ``benchmark.*``,
mirrored by ``configs/eval.yaml`` and ``configs/benchmark/``."""

from __future__ import annotations

from dataclasses import dataclass, field

from chronoedit.pipeline.config import EditConfig
from chronoedit.toyworld.edits import KINDS
from chronoedit.toyworld.world import CANVASES

BASELINES = ("copy_input", "truth", "vae_roundtrip")


@dataclass
class BenchmarkConfig:
    # items.jsonl: {"image", "prompt", "target"?, "truth"?, "seed"?} rows (paths relative to the file; a written
    # toy split's truth.jsonl is one). null: the toy world's held-out split, generated from seed / n / size.
    path: str | None = None
    seed: int = 1  # the toy split: the "test" stream of this seed (never shared with a train split)
    n: int = 60  # toy items; the kinds cycle (60 = 10 of each)
    size: int = 128  # toy canvas: 64, 128 or 256 (the edit runs at this size unless height/width are given)
    kinds: list[str] = field(default_factory=lambda: list(KINDS))  # the toy edit kinds to cycle through
    baseline: str | None = None  # copy_input | truth | vae_roundtrip: reference rows without the DiT
    grid: int = 8  # items shown in grid.png (input | edit | truth)
    save_edits: bool = True  # edits/<item>.png

    def __post_init__(self) -> None:
        problems = []
        if self.n < 1:
            problems.append(f"n={self.n} must be >= 1")
        if self.size not in CANVASES:
            problems.append(f"size={self.size} must be one of {list(CANVASES)}")
        bad = [k for k in self.kinds if k not in KINDS]
        if bad or not self.kinds:
            problems.append(f"kinds {bad or '[]'} must be a non-empty subset of {list(KINDS)}")
        if self.baseline is not None and self.baseline not in BASELINES:
            problems.append(f"baseline={self.baseline!r} must be null or one of {list(BASELINES)}")
        if self.seed < 0:
            problems.append(f"seed={self.seed} must be >= 0")
        if problems:
            raise ValueError("invalid benchmark config: " + "; ".join(problems))


@dataclass
class EvalConfig(EditConfig):
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
