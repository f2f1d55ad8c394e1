"""Write toy-world examples in the training data format (README "Training" → dataset format), with their truth.

    DIR/metadata.jsonl   {"input", "output", "prompt"} per example: what train/preencode.py reads
    DIR/in/000000.png    the input image
    DIR/out/000000.png   an edit pair's target, or
    DIR/clips/000000/    a video-prior clip: the 29 trajectory frames 0000.png … 0028.png (frame 0 the input)
    DIR/truth.jsonl      {"image", "prompt", "target", "truth"} per example, in metadata order: the ground truth
                         (edit kind and parameters, both end states' object lists, the trajectory centroids);
                         also an items file for ``python infer/eval.py benchmark.path=DIR/truth.jsonl``
    DIR/dataset.json     how it was made: n, seed, size, split, clip_ratio, counts

The truth is a separate file because the metadata reader rejects unknown fields. Example i depends only on
(split, seed, i) (see ``sample.py``), so the bytes do not depend on the number of worker processes.
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from chronoedit.toyworld.draw import SUPERSAMPLE, render
from chronoedit.toyworld.edits import KINDS
from chronoedit.toyworld.sample import SPLITS, sample_example
from chronoedit.toyworld.trajectory import FRAMES
from chronoedit.toyworld.world import check_canvas

METADATA, TRUTH, INFO = "metadata.jsonl", "truth.jsonl", "dataset.json"
PNG_LEVEL = 1  # zlib level: flat images compress well at any level, 1 is the fastest


@dataclass
class DatasetSpec:
    n: int  # examples
    seed: int = 0
    size: int = 128  # canvas (64, 128 or 256)
    clip_ratio: float = 0.3  # share of examples written as video-prior clips (the rest are edit pairs)
    split: str = "train"  # train | test: disjoint random streams for the same seed
    supersample: int = SUPERSAMPLE  # anti-aliasing (1 = hard edges)

    def __post_init__(self) -> None:
        check_canvas(self.size)
        problems = []
        if self.n < 1:
            problems.append(f"n={self.n} must be >= 1")
        if self.seed < 0:
            problems.append(f"seed={self.seed} must be >= 0")
        if not 0 <= self.clip_ratio <= 1:
            problems.append(f"clip_ratio={self.clip_ratio} must be in [0, 1]")
        if self.split not in SPLITS:
            problems.append(f"split={self.split!r} must be one of {list(SPLITS)}")
        if self.supersample < 1:
            problems.append(f"supersample={self.supersample} must be >= 1")
        if problems:
            raise ValueError("invalid toy dataset: " + "; ".join(problems))


def check_output(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"{out} is not empty (pass --overwrite to write into it)")


def _save(image, path: Path) -> None:
    image.save(path, format="PNG", compress_level=PNG_LEVEL)


def write_example(out: Path, spec: DatasetSpec, index: int) -> tuple[dict, dict]:
    """Write example ``index``'s files; its metadata row and its truth row."""
    ex = sample_example(spec.seed, index, spec.size, spec.split, KINDS, spec.clip_ratio)
    name = f"{index:06d}"
    first = render(ex.scene, spec.supersample)
    _save(first, out / "in" / f"{name}.png")
    if ex.clip:
        folder = out / "clips" / name
        folder.mkdir(exist_ok=True)
        for f, scene in enumerate(ex.frames):
            _save(first if f == 0 else render(scene, spec.supersample), folder / f"{f:04d}.png")
        output, target = f"clips/{name}", f"clips/{name}/{FRAMES - 1:04d}.png"
    else:
        _save(render(ex.target, spec.supersample), out / "out" / f"{name}.png")
        output = target = f"out/{name}.png"
    prompt = ex.edit.prompt
    meta = {"input": f"in/{name}.png", "output": output, "prompt": prompt}
    return meta, {"image": meta["input"], "prompt": prompt, "target": target, "truth": ex.truth()}


def write_dataset(out: str | Path, spec: DatasetSpec, workers: int = 1, overwrite: bool = False) -> dict:
    """Write ``spec.n`` examples into ``out``; returns {"n", "counts", "seconds", "examples_per_s"}."""
    out = Path(out)
    check_output(out, overwrite)
    for sub in ("in", "out", "clips"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    job = functools.partial(write_example, out, spec)
    if workers > 1:
        chunk = max(1, min(64, spec.n // (workers * 8)))
        with multiprocessing.get_context("spawn").Pool(workers) as pool:  # spawn: safe beside torch's threads
            rows = list(pool.imap(job, range(spec.n), chunksize=chunk))
    else:
        rows = [job(i) for i in range(spec.n)]
    (out / METADATA).write_text("".join(json.dumps(m) + "\n" for m, _ in rows))
    (out / TRUTH).write_text("".join(json.dumps(t) + "\n" for _, t in rows))
    clips = sum(m["output"].startswith("clips/") for m, _ in rows)
    counts = {"pair": spec.n - clips, "clip": clips, "kinds": dict(Counter(t["truth"]["kind"] for _, t in rows))}
    (out / INFO).write_text(json.dumps({**asdict(spec), "frames": FRAMES, "counts": counts}, indent=1) + "\n")
    seconds = time.perf_counter() - t0
    return {"n": spec.n, "counts": counts, "seconds": seconds, "examples_per_s": spec.n / seconds}
