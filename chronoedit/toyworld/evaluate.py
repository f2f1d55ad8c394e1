"""The evaluation job of ``infer/eval.py``: run the edit pipeline (or a baseline) over benchmark items, score
each against its truth, and write

    results.jsonl   one row per item: prompt, kind, seed, metrics (``metrics.py``), pipeline_s, eval_s
    metrics.json    means with 95% intervals per edit kind and overall, timings, the run's overrides
    grid.png        input | edit | truth of the first ``benchmark.grid`` items
    edits/          every edited image (``benchmark.save_edits``), config.yaml

Items are the toy world's held-out split (generated on the fly: ``sample_example(seed, i, size, "test")``, the
examples ``tools/make_toy_dataset.py --split test`` writes) or the rows of ``benchmark.path``. Baselines:
``copy_input`` (the edit is the input, the video its copies), ``truth`` (the true edit and trajectory) and
``vae_roundtrip`` (the true edit video [input, edit × 4] encoded and decoded by the checkpoint's VAE, its last
frame scored: the best any DiT can do through that VAE — its video is not scored).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from PIL import Image, ImageDraw

from chronoedit.pipeline.images import image_to_tensor, unit_to_images, video_to_unit
from chronoedit.pipeline.pipeline import EditRequest
from chronoedit.pipeline.resolution import DEFAULT_MAX_AREA, resolve_size
from chronoedit.toyworld.draw import render
from chronoedit.toyworld.eval_config import EvalConfig
from chronoedit.toyworld.metrics import psnr, score_edit, score_video
from chronoedit.toyworld.sample import Example, sample_example
from chronoedit.toyworld.segment import as_array
from chronoedit.toyworld.stats import summarize_rows

METRICS = ("success", "found", "centroid_error_px", "size_ratio", "color_ok", "angle_error_deg", "other_drift_px",
           "others_vanished", "psnr", "psnr_bg", "traj_error_px", "traj_found", "monotone", "pipeline_s", "eval_s")  # fmt: skip
ITEM_FIELDS = {"image", "prompt", "target", "truth", "seed"}
TINY_EVAL_AREA = 128 * 128  # path items on the tiny random model without height/width: seconds per item
CELL = 128  # grid.png cell size


@dataclass
class Item:
    name: str  # "0003_rotate": files of this item are named after it
    image: Image.Image
    prompt: str
    seed: int
    target: Image.Image | None = None
    truth: dict | None = None  # Example.truth() (object metrics need it)
    example: Example | None = None  # toy items: the whole example (the truth baseline renders its trajectory)

    def true_frames(self) -> list[Image.Image] | None:
        return [render(s) for s in self.example.frames] if self.example is not None else None


def toy_items(cfg: EvalConfig) -> Iterator[Item]:
    b = cfg.benchmark
    for i in range(b.n):
        ex = sample_example(b.seed, i, b.size, "test", tuple(b.kinds))
        yield Item(f"{i:04d}_{ex.edit.kind}", render(ex.scene), ex.edit.prompt, cfg.seed + i, render(ex.target),
                   ex.truth(), ex)  # fmt: skip


def _load(path: Path, where: str) -> Image.Image:
    if not path.is_file():
        raise ValueError(f"{where}: image not found: {path}")
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except OSError as e:
        raise ValueError(f"{where}: cannot read image {path} ({e})") from e


def read_items(path: str | Path, base_seed: int) -> list[Item]:
    """The rows of an items file, images loaded (every problem a ValueError naming the line)."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"benchmark.path: items file not found: {p}")
    items = []
    for n, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{p}:{n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not a JSON object ({e.msg})") from e
        if not isinstance(row, dict) or not isinstance(row.get("image"), str) or not isinstance(row.get("prompt"), str):
            raise ValueError(f"{where}: each row needs 'image' and 'prompt' (optional 'target', 'truth', 'seed')")
        unknown = set(row) - ITEM_FIELDS
        if unknown:
            raise ValueError(f"{where}: unknown fields {sorted(unknown)}")
        image = _load(p.parent / row["image"], where)
        target = _load(p.parent / row["target"], where) if row.get("target") else None
        name = f"{len(items):04d}_{row['truth']['kind'] if row.get('truth') else Path(row['image']).stem}"
        items.append(Item(name, image, row["prompt"], int(row.get("seed", base_seed + len(items))), target,
                          row.get("truth")))  # fmt: skip
    if not items:
        raise ValueError(f"benchmark.path: {p} has no rows")
    return items


def check_inputs(cfg: EvalConfig) -> None:
    """The checks that need no model: the items file, the baseline's needs, the edit settings."""
    items = read_items(cfg.benchmark.path, cfg.seed) if cfg.benchmark.path else [next(toy_items(cfg))]
    if cfg.benchmark.baseline in ("truth", "vae_roundtrip") and any(it.target is None for it in items):
        raise ValueError(f"benchmark.baseline={cfg.benchmark.baseline} needs a 'target' image in every item")
    for it in items:
        _request(cfg, it).validate()


def _request(cfg: EvalConfig, item: Item) -> EditRequest:
    toy = cfg.benchmark.path is None
    height = cfg.height if cfg.height is not None or not toy else cfg.benchmark.size
    width = cfg.width if cfg.width is not None or not toy else cfg.benchmark.size
    max_area = cfg.max_area or (TINY_EVAL_AREA if cfg.checkpoint == "tiny" else DEFAULT_MAX_AREA)
    return EditRequest(image=item.image, prompt=item.prompt, negative_prompt=cfg.negative_prompt, seed=item.seed,
                        guidance_scale=cfg.guidance_scale, reasoning_steps=cfg.reasoning.steps,
                        num_frames=cfg.num_frames, height=height, width=width, max_area=max_area)  # fmt: skip


def score(item: Item, pred: Image.Image, frames: list[Image.Image] | None) -> dict:
    """The metrics of one item that its truth allows (object metrics with a truth, PSNR with a target)."""
    if item.truth is not None:
        row = score_edit(pred, item.truth, item.target)
        if frames is not None and len(frames) == len(item.truth["trajectory"]):
            row.update(score_video(frames, item.truth))
        return row
    if item.target is not None:
        return {"psnr": psnr(as_array(pred.convert("RGB").resize(item.target.size)), as_array(item.target))}
    return {}


@torch.no_grad()
def vae_roundtrip(pipe, request: EditRequest, target: Image.Image) -> Image.Image:
    """The true edit through the pipeline's VAE as an edit pair is encoded ([input, edit × 4] → 2 latent frames)
    and decoded: the last frame, at the request's resolution."""
    height, width = resolve_size(request.image.size, request.height, request.width, request.max_area)
    frames = [image_to_tensor(request.image, height, width)] + [image_to_tensor(target, height, width)] * 4
    latents = pipe.encode_video(torch.stack(frames, dim=2))  # (1, 3, 5, H, W) -> (1, 16, 2, h, w)
    last = video_to_unit(pipe.decode(latents, reasoning=False))[0, :, -1:].transpose(0, 1).cpu()  # (1, 3, H, W)
    return unit_to_images(last)[0]


def write_grid(rows: list[tuple[Item, Image.Image]], path: Path) -> None:
    """input | edit | truth per item, the prompt above each row."""
    label = 14
    grid = Image.new("RGB", (3 * CELL, len(rows) * (CELL + label) + label), "white")
    draw = ImageDraw.Draw(grid)
    for c, head in enumerate(("input", "edit", "truth")):
        draw.text((c * CELL + 4, 1), head, fill="black")
    for r, (item, pred) in enumerate(rows):
        y = label + r * (CELL + label)
        draw.text((4, y + 1), item.prompt[:60], fill="black")
        for c, im in enumerate((item.image, pred, item.target)):
            if im is not None:
                grid.paste(im.convert("RGB").resize((CELL, CELL), Image.Resampling.NEAREST), (c * CELL, y + label))
    grid.save(path)


def check_output(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"output_dir {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"output_dir {out} exists and is not empty (pass overwrite=true to write into it)")


def run_eval(
    cfg: EvalConfig, out: Path, overrides: list[str] | None = None, model_overrides: Mapping[str, Any] | None = None
) -> dict:
    """Evaluate; returns the summary written to metrics.json."""
    check_inputs(cfg)
    check_output(out, cfg.overwrite)
    b = cfg.benchmark
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False, allow_unicode=True))
    if b.save_edits:
        (out / "edits").mkdir(exist_ok=True)
    t_load = time.perf_counter()
    pipe = None
    if b.baseline in (None, "vae_roundtrip"):
        from chronoedit.pipeline.job import build_pipeline

        pipe = build_pipeline(cfg, model_overrides=model_overrides) if model_overrides else build_pipeline(cfg)
        pipe.progress = False
    load_s = time.perf_counter() - t_load

    rows, shown = [], []
    step_cache = {"method": cfg.runtime.step_cache, "forwards": 0, "skipped": 0}  # totals over the items
    items: Iterator[Item] = iter(read_items(b.path, cfg.seed)) if b.path else toy_items(cfg)
    with open(out / "results.jsonl", "w") as results:
        while True:
            t0 = time.perf_counter()
            item = next(items, None)
            if item is None:
                break
            t1 = time.perf_counter()
            if b.baseline == "vae_roundtrip":
                pred, frames = vae_roundtrip(pipe, _request(cfg, item), item.target), None
            elif pipe is not None:
                result = pipe(_request(cfg, item), cfg.sampler)
                pred, frames = result.image, result.frames
                if result.step_cache is not None:
                    step_cache["forwards"] += result.step_cache.forwards
                    step_cache["skipped"] += result.step_cache.skipped
            elif b.baseline == "copy_input":
                pred, frames = item.image, [item.image] * cfg.num_frames
            else:
                pred, frames = item.target, item.true_frames()
            t2 = time.perf_counter()
            row = {"item": item.name, "prompt": item.prompt, "seed": item.seed, "kind": (item.truth or {}).get("kind")}
            row.update(score(item, pred, frames))
            if b.save_edits:
                pred.save(out / "edits" / f"{item.name}.png")
            if len(shown) < b.grid:
                shown.append((item, pred))
            row["pipeline_s"] = t2 - t1 if pipe is not None else 0.0  # the roundtrip's VAE time included
            row["eval_s"] = (t1 - t0) + (time.perf_counter() - t2)  # making the item, scoring, saving
            results.write(json.dumps(row) + "\n")
            results.flush()
            rows.append(row)
            print(f"{item.name}: {item.prompt!r} success={row.get('success')} ({row['pipeline_s']:.2f} s)")
    write_grid(shown, out / "grid.png")

    summary = {
        "benchmark": dataclasses.asdict(b),
        "checkpoint": cfg.checkpoint,
        "baseline": b.baseline,
        "reasoning_steps": cfg.reasoning.steps,
        "sampler": dataclasses.asdict(cfg.sampler),
        "overrides": list(overrides or []),
        "n": len(rows),
        **summarize_rows(rows, METRICS),
        "step_cache": step_cache if pipe is not None and b.baseline is None else None,
        "timings": {
            "load_s": load_s,
            "pipeline_s_per_item": sum(r["pipeline_s"] for r in rows) / len(rows),
            "eval_s_per_item": sum(r["eval_s"] for r in rows) / len(rows),
        },
    }
    (out / "metrics.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary
