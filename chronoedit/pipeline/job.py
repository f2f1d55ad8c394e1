"""An edit job from an :class:`EditConfig`: check every input, load the models, run, write the outputs.

Everything that can be checked without models is checked first (images, prompts, sizes, frame counts,
LoRA files, the output folder), so a mistake costs a second, not a model load.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import torch
import yaml

from chronoedit.checkpoint.architecture import NO_CHECKPOINT, resolve_init
from chronoedit.checkpoint.safetensors_io import save_file
from chronoedit.files import claim_output_dir, read_jsonl, write_text
from chronoedit.parallel.config import check_parallel, launched_rank, launched_world_size
from chronoedit.pipeline.components import Components, load_components
from chronoedit.pipeline.config import EditConfig, lora_spec
from chronoedit.pipeline.images import load_image, save_frames, save_mp4, save_png, save_webp
from chronoedit.pipeline.pipeline import EditPipeline, EditRequest, EditResult
from chronoedit.pipeline.resolution import DEFAULT_MAX_AREA
from chronoedit.runtime import resolve_device, resolve_dtype
from chronoedit.sampling.step_cache import ONE_EVALUATION_SOLVERS, Calibration, MagCacheSettings

log = logging.getLogger("chronoedit")

TINY_MAX_AREA = 256 * 384  # the demo model's default output area: an edit in seconds on a CPU


@dataclass
class Job:
    name: str  # sub-folder of the output folder ("" for a single edit)
    request: EditRequest


def example_image(checkpoint: str | None = None) -> Path:
    """The default input: the checkpoint folder's ``example.png`` when it ships one (ChronoEdit-Toy does: a
    scene of its world), else the example image in chronoedit/assets."""
    if checkpoint and (Path(checkpoint) / "example.png").is_file():
        return Path(checkpoint) / "example.png"
    return Path(str(files("chronoedit") / "assets" / "example.png"))


def _read_batch(path: str) -> list[dict]:
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"batch file not found: {p}")
    rows = []
    for n, row in read_jsonl(p):  # a line that is not JSON: "<file>:<line>:<column>: invalid JSON (…)"
        if not isinstance(row, dict) or "image" not in row or "prompt" not in row:
            raise ValueError(f"{p}:{n}: each row needs 'image' and 'prompt' (optional 'seed', 'negative_prompt')")
        unknown = set(row) - {"image", "prompt", "seed", "negative_prompt"}
        if unknown:
            raise ValueError(f"{p}:{n}: unknown fields {sorted(unknown)}")
        row["image"] = str((p.parent / row["image"]) if not Path(row["image"]).is_absolute() else row["image"])
        rows.append(row)
    if not rows:
        raise ValueError(f"batch file {p} has no rows")
    return rows


def plan_jobs(cfg: EditConfig) -> list[Job]:
    """Every edit of this config, each validated (image readable, sizes, frames, reasoning steps)."""
    max_area = cfg.max_area or (TINY_MAX_AREA if cfg.checkpoint == NO_CHECKPOINT else DEFAULT_MAX_AREA)
    if cfg.batch:
        rows = _read_batch(cfg.batch)
    else:
        rows = [{"image": cfg.image or str(example_image(cfg.checkpoint)), "prompt": cfg.prompt}]
    jobs = []
    for i, row in enumerate(rows):
        request = EditRequest(
            image=load_image(row["image"]),
            prompt=row["prompt"],
            negative_prompt=row.get("negative_prompt", cfg.negative_prompt),
            seed=int(row.get("seed", cfg.seed)),
            guidance_scale=cfg.guidance_scale,
            reasoning_steps=cfg.reasoning.steps,
            num_frames=cfg.num_frames,
            height=cfg.height,
            width=cfg.width,
            max_area=max_area,
        )
        request.validate()
        jobs.append(Job(f"{i:04d}_{Path(row['image']).stem}" if cfg.batch else "", request))
    return jobs


def check_output_dir(out: Path, overwrite: bool) -> None:
    """The output folder can be written (not a file, not under one, writable), this process holds its lock (a
    second edit into the same folder is refused until this process exits), and it is empty unless ``overwrite``.
    An :class:`~chronoedit.files.OutputError` (a ValueError) otherwise."""
    claim_output_dir(out, overwrite=overwrite, what="output_dir")


def check_inputs(cfg: EditConfig, out: Path) -> tuple[list[Job], torch.device, torch.dtype]:
    """All checks that need no model: returns the planned jobs, the device and the dtype."""
    jobs = plan_jobs(cfg)
    for spec in cfg.lora:
        if spec.path != "distill" and not Path(spec.path).is_file():
            raise ValueError(f"LoRA file not found: {spec.path}")
    if cfg.checkpoint != NO_CHECKPOINT and not (Path(cfg.checkpoint).exists() or cfg.checkpoint.count("/") == 1):
        raise ValueError(f"checkpoint {cfg.checkpoint!r} is neither 'tiny', an existing folder nor a Hub repo id")
    files = cfg.components.given()
    absent = [f"components.{k}={v}" for k, v in files.items() if not Path(v).exists()]
    if absent:
        raise ValueError(f"no such file or folder: {', '.join(absent)}")
    random = resolve_init(cfg.checkpoint, cfg.init, files) == "random"  # else the heads are checked once loaded
    check_parallel(cfg.parallel, launched_world_size(), cfg.model.dit.num_heads if random else None)
    step_cache_settings(cfg)  # the calibration file readable, the solver and process count supported
    device = resolve_device(cfg.runtime.device)
    dtype = resolve_dtype(cfg.runtime.dtype, device)
    if launched_rank() == 0:  # (torchrun: rank 0 owns the folder)
        check_output_dir(out, cfg.overwrite)  # last: it creates (and locks) the folder
    return jobs, device, dtype


def apply_loras(components: Components, cfg: EditConfig) -> list[str]:
    """Load and apply every LoRA of the config to the DiT (fused or as runtime adapters)."""
    from chronoedit.lora import add_adapter, fuse_lora
    from chronoedit.lora.formats import read_lora

    applied, fused = [], []
    for i, spec in enumerate(map(lora_spec, cfg.lora)):  # bare paths too (EditConfig normalises them already)
        path = components.extras.get("distill_lora") if spec.path == "distill" else spec.path
        if path is None:
            raise ValueError(
                "lora path 'distill' needs a checkpoint that ships lora/chronoedit_distill_lora.safetensors"
            )
        weights, scheme = read_lora(path)
        if spec.fuse:
            fused.append((weights, spec.scale))
        else:
            add_adapter(components.dit, weights, name=f"lora{i}", strength=spec.scale)
        applied.append(f"{path} ({scheme}, scale {spec.scale}, {'fused' if spec.fuse else 'runtime'})")
    if fused:
        fuse_lora(components.dit, fused)
    return applied


def write_outputs(result: EditResult, folder: Path, cfg: EditConfig, request: EditRequest) -> dict:
    """Every output of one edit, each written atomically (a temporary name, then renamed): a file under its
    final name is always whole. ``summary.json`` comes last."""
    folder.mkdir(parents=True, exist_ok=True)
    save_png(result.image, folder / "edit.png")
    written = ["edit.png"]
    if cfg.save_frames:
        save_frames(result.frames, folder / "frames")
        written.append(f"frames/ ({len(result.frames)})")
    if cfg.save_latents:
        save_file({"latents": result.latents}, folder / "latents.safetensors")
        written.append("latents.safetensors")
    if result.is_reasoning_video:
        save_webp(result.frames, folder / "video.webp", fps=cfg.fps)
        written.append("video.webp")
        if save_mp4(result.frames, folder / "video.mp4", fps=cfg.fps):
            written.append("video.mp4")
    summary = {
        "prompt": request.prompt,
        "seed": request.seed,
        "height": result.height,
        "width": result.width,
        "frames": len(result.frames),
        "reasoning_steps": request.reasoning_steps,
        "dropped_at_step": result.dropped_at,
        "step_cache": step_cache_summary(result),
        "timings": result.profile.as_dict(),
        "total_seconds": sum(s.seconds for s in result.profile.stages),
        "files": written,
    }
    write_text(folder / "summary.json", json.dumps(summary, indent=2))
    return summary


def step_cache_settings(cfg: EditConfig) -> MagCacheSettings | None:
    """``runtime.step_cache`` as the pipeline takes it (None: off), its calibration loaded; ValueErrors for a
    missing or malformed calibration, a two-evaluation solver (heun) or several processes."""
    rt = cfg.runtime
    if rt.step_cache == "none":
        return None
    if cfg.parallel.size > 1:
        raise ValueError("runtime.step_cache is not supported with parallel.* (several processes)")
    if cfg.sampler.name not in ONE_EVALUATION_SOLVERS:
        raise ValueError(
            f"runtime.step_cache needs one of the solvers {ONE_EVALUATION_SOLVERS}, not {cfg.sampler.name}"
        )
    return MagCacheSettings(
        Calibration.load(rt.step_cache_calibration),
        threshold=rt.step_cache_threshold,
        max_skips=rt.step_cache_max_skips,
        retention=rt.step_cache_retention,
    )


def step_cache_summary(result: EditResult) -> dict:
    """``summary.json``'s step_cache: method, forwards (DiT calls, computed + skipped), skipped (and which steps)."""
    return result.step_cache.as_dict() if result.step_cache is not None else {"method": "none"}


def build_pipeline(
    cfg: EditConfig,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
    model_overrides: Mapping[str, Any] | None = None,
) -> EditPipeline:
    """The models of ``cfg`` loaded (``model_overrides``: the ``model.*`` fields given explicitly, which replace a
    checkpoint's own), LoRAs applied, runtime settings installed, wrapped in an :class:`EditPipeline`."""
    from chronoedit.parallel.apply import join_processes, parallelize_pipeline
    from chronoedit.parallelize import apply_attention, apply_compile

    rt = cfg.runtime
    device = join_processes(cfg.parallel, device or resolve_device(rt.device))  # torchrun: this rank's device
    dtype = dtype or resolve_dtype(rt.dtype, device)
    components = load_components(
        cfg.checkpoint,
        dtype=dtype,
        model=cfg.model,
        init=cfg.init,
        overrides=model_overrides,
        seed=cfg.init_seed,
        files=cfg.components.given(),
    )
    print(f"checkpoint: {components.source}")
    if components.random_weights:
        print(
            "NOTE: RANDOM weights (init=random) — the edit is noise by construction.\n"
            "      Pass checkpoint=<ChronoEdit-14B-Diffusers folder or Hub id> for real edits (see README)."
        )
    for line in apply_loras(components, cfg):
        print(f"LoRA: {line}")
    apply_attention(components.dit, rt.attention)
    apply_attention(components.image_encoder, rt.attention)
    if rt.compile:
        apply_compile(components.dit)
    pipe = EditPipeline(
        components,
        device=device,
        dtype=dtype,
        offload=rt.offload,
        cfg_batched=rt.cfg_batched,
        tiling=rt.vae,
        context_cache=rt.context_cache,
        step_cache=step_cache_settings(cfg),
    )
    return parallelize_pipeline(pipe, cfg.parallel)  # one process: unchanged


def run(cfg: EditConfig, out: Path, model_overrides: Mapping[str, Any] | None = None) -> dict:
    """Run the job; returns a summary (also written as summary.json). ``model_overrides``: see
    :func:`build_pipeline`."""
    from chronoedit.parallel.apply import leave_processes, mesh_of

    jobs, device, dtype = check_inputs(cfg, out)
    if launched_rank() == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False, allow_unicode=True))
    pipe = build_pipeline(cfg, device, dtype, model_overrides)
    mesh = mesh_of(pipe)  # torchrun: each dp group runs every dp-th edit; one rank of it writes the outputs
    summaries = []
    for job in jobs[mesh.dp_rank :: mesh.sizes.dp]:
        result = pipe(job.request, cfg.sampler)
        if not mesh.writes_outputs:
            summaries.append({"total_seconds": sum(s.seconds for s in result.profile.stages)})
            continue
        summary = write_outputs(result, out / job.name if job.name else out, cfg, job.request)
        summaries.append(summary)
        where = out / job.name if job.name else out
        print(f"{where / 'edit.png'}  ({result.width}x{result.height}, {len(result.frames)} frames)")
        print(result.profile.table())
    leave_processes()  # torchrun: wait for every rank, then leave the process group
    total = {"total_seconds": sum(s["total_seconds"] for s in summaries), "edits": len(summaries)}
    if cfg.batch and launched_rank() == 0:
        (out / "summary.json").write_text(json.dumps({**total, "runs": summaries}, indent=2))
    return summaries[0] if len(summaries) == 1 else total
