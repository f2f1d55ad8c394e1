"""An edit job from an :class:`EditConfig`: check every input, load the models, run, write the outputs.

Everything that can be checked without models is checked first (images, prompts, sizes, frame counts,
LoRA files, the output folder), so a mistake costs a second, not a model load.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import torch
import yaml

from chronoedit.checkpoint.safetensors_io import save_file
from chronoedit.pipeline.components import TINY, Components, load_components
from chronoedit.pipeline.config import EditConfig
from chronoedit.pipeline.images import load_image, save_mp4, save_webp
from chronoedit.pipeline.pipeline import EditPipeline, EditRequest, EditResult
from chronoedit.pipeline.resolution import DEFAULT_MAX_AREA

log = logging.getLogger("chronoedit")

TINY_MAX_AREA = 256 * 384  # the demo model's default output area: an edit in seconds on a CPU
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Job:
    name: str  # sub-folder of the output folder ("" for a single edit)
    request: EditRequest


def example_image() -> Path:
    return Path(str(files("chronoedit") / "assets" / "example.png"))


def _read_batch(path: str) -> list[dict]:
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"batch file not found: {p}")
    rows = []
    for n, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{p}:{n}: not a JSON object ({e.msg})") from e
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
    max_area = cfg.max_area or (TINY_MAX_AREA if cfg.checkpoint == TINY else DEFAULT_MAX_AREA)
    if cfg.batch:
        rows = _read_batch(cfg.batch)
    else:
        rows = [{"image": cfg.image or str(example_image()), "prompt": cfg.prompt}]
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
    if out.exists() and not out.is_dir():
        raise ValueError(f"output_dir {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"output_dir {out} exists and is not empty (pass overwrite=true to write into it)")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name} but CUDA is not available")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ValueError(f"dtype={name!r} is not one of {['auto', *DTYPES]}")
    return DTYPES[name]


def check_inputs(cfg: EditConfig, out: Path) -> tuple[list[Job], torch.device, torch.dtype]:
    """All checks that need no model: returns the planned jobs, the device and the dtype."""
    jobs = plan_jobs(cfg)
    for spec in cfg.lora:
        if spec.path != "distill" and not Path(spec.path).is_file():
            raise ValueError(f"LoRA file not found: {spec.path}")
    if cfg.checkpoint != TINY and not (Path(cfg.checkpoint).exists() or cfg.checkpoint.count("/") == 1):
        raise ValueError(f"checkpoint {cfg.checkpoint!r} is neither 'tiny', an existing folder nor a Hub repo id")
    check_output_dir(out, cfg.overwrite)
    device = resolve_device(cfg.device)
    return jobs, device, resolve_dtype(cfg.dtype, device)


def apply_loras(components: Components, cfg: EditConfig) -> list[str]:
    """Load and apply every LoRA of the config to the DiT (fused or as runtime adapters)."""
    from chronoedit.lora import add_adapter, fuse_lora
    from chronoedit.lora.formats import read_lora

    applied, fused = [], []
    for i, spec in enumerate(cfg.lora):
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
    folder.mkdir(parents=True, exist_ok=True)
    result.image.save(folder / "edit.png")
    written = ["edit.png"]
    if cfg.save_frames:
        (folder / "frames").mkdir(exist_ok=True)
        for n, frame in enumerate(result.frames):
            frame.save(folder / "frames" / f"{n:04d}.png")
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
        "timings": result.profile.as_dict(),
        "total_seconds": sum(s.seconds for s in result.profile.stages),
        "files": written,
    }
    (folder / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def run(cfg: EditConfig, out: Path) -> dict:
    """Run the job; returns a summary (also written as summary.json)."""
    jobs, device, dtype = check_inputs(cfg, out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False, allow_unicode=True))
    components = load_components(cfg.checkpoint, dtype=dtype)
    print(f"checkpoint: {components.source}")
    if components.random_weights:
        print(
            "NOTE: this is the built-in tiny demo model with RANDOM weights — the edit is noise by construction.\n"
            "      Pass checkpoint=<ChronoEdit-14B-Diffusers folder or Hub id> for real edits (see README)."
        )
    for line in apply_loras(components, cfg):
        print(f"LoRA: {line}")
    if cfg.vae_tiling:
        components.vae.cfg = components.vae.cfg.replace(tile=True)
    pipe = EditPipeline(components, device=device, dtype=dtype, offload=cfg.offload, cfg_batched=cfg.cfg_batched)
    summaries = []
    for job in jobs:
        result = pipe(job.request, cfg.sampler)
        summary = write_outputs(result, out / job.name if job.name else out, cfg, job.request)
        summaries.append(summary)
        where = out / job.name if job.name else out
        print(f"{where / 'edit.png'}  ({result.width}x{result.height}, {len(result.frames)} frames)")
        print(result.profile.table())
    total = {"total_seconds": sum(s["total_seconds"] for s in summaries), "edits": len(summaries)}
    if cfg.batch:
        (out / "summary.json").write_text(json.dumps({**total, "runs": summaries}, indent=2))
    return summaries[0] if len(summaries) == 1 else total
