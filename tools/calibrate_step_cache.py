"""Calibrate MagCache (``runtime.step_cache=magcache``) for a checkpoint: the per-step magnitude-ratio curve.

    python tools/calibrate_step_cache.py --out calib.json checkpoint=tiny sampler.steps=50
    python tools/calibrate_step_cache.py --out toy.json checkpoint=runs/toy/final reasoning.steps=10 \\
        --image a.png --image b.png --prompt "move the red circle left" --prompt "make the square blue"
    python infer/edit.py checkpoint=... runtime.step_cache=magcache runtime.step_cache_calibration=calib.json

Every ``key=value`` is an ``infer/edit.py`` override (checkpoint, sampler.*, reasoning.steps, guidance_scale,
height/width, runtime.*: the calibration should use the sampler, step count, guidance and reasoning setting the
cached edits will use). Each (image, prompt, seed) is edited once with every DiT forward computed, recording
γ_i = mean over tokens of ‖r_i‖ / ‖r_{i−1}‖ per step and CFG branch (r: the block stack's residual), as the
MagCache paper calibrates; the curves are averaged over the edits and written as JSON with how they were made.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_PROMPTS = (
    "Add a red hot-air balloon floating in the sky above the house",
    "Move the red circle to the left",
    "Make the blue square twice as large",
)


def calibrate(overrides: list[str], images: list[str], prompts: list[str], seeds: int) -> dict:
    """Run the edits (every forward computed) and return ``{"calibration": Calibration, "config": EditConfig}``."""
    from chronoedit.builders import EditConfig, compose_config
    from chronoedit.pipeline.job import build_pipeline, plan_jobs
    from chronoedit.sampling.step_cache import Calibrator

    cfg, model_overrides = compose_config(ROOT / "configs", "edit", overrides, EditConfig)
    if cfg.runtime.step_cache != "none":
        raise ValueError("calibrate with runtime.step_cache=none (every forward computed)")
    if cfg.sampler.name == "heun":
        raise ValueError("runtime.step_cache needs one model evaluation per step: not sampler=heun")
    requests = []
    for image in images or [cfg.image]:
        for prompt in prompts or list(DEFAULT_PROMPTS):
            for s in range(seeds):
                one = dataclasses.replace(cfg, image=image, prompt=prompt, seed=cfg.seed + s, batch=None)
                requests.extend(job.request for job in plan_jobs(one))
    pipe = build_pipeline(cfg, model_overrides=model_overrides)
    pipe.progress = False
    calibrator = Calibrator()
    pipe.step_cache = calibrator
    for n, request in enumerate(requests, 1):
        pipe(request, cfg.sampler)
        print(f"[{n}/{len(requests)}] {request.prompt!r} seed {request.seed}", flush=True)
    meta = {
        "checkpoint": cfg.checkpoint,
        "overrides": overrides,
        "sampler": dataclasses.asdict(cfg.sampler),
        "guidance_scale": cfg.guidance_scale,
        "reasoning_steps": cfg.reasoning.steps,
        "num_frames": cfg.num_frames,
        "dtype": str(pipe.dtype).removeprefix("torch."),
    }
    return {"calibration": calibrator.calibration(meta), "config": cfg}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="the calibration JSON to write")
    ap.add_argument("--image", action="append", default=[], help="an input image (repeatable; default: config's)")
    ap.add_argument("--prompt", action="append", default=[], help="an instruction (repeatable; default: 3 built-in)")
    ap.add_argument("--seeds", type=int, default=1, help="seeds per (image, prompt): seed, seed + 1, …")
    ap.add_argument("overrides", nargs="*", help="infer/edit.py overrides, key=value")
    args = ap.parse_args(argv)
    if args.seeds < 1:
        ap.error("--seeds must be >= 1")
    from chronoedit.checkpoint.errors import CheckpointError
    from chronoedit.files import write_text

    try:
        cal = calibrate(args.overrides, args.image, args.prompt, args.seeds)["calibration"]
    except (ValueError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write_text(Path(args.out), cal.to_json())
    print(f"{args.out}: {cal.meta['samples']} edits, {cal.steps} steps")
    print("cond   γ: " + " ".join(f"{v:.3f}" for v in cal.cond))
    if cal.uncond is not None:
        print("uncond γ: " + " ".join(f"{v:.3f}" for v in cal.uncond))
    return 0


if __name__ == "__main__":
    sys.exit(main())
