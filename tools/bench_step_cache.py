"""MagCache thresholds against the exact edit on toy-world items: forwards skipped, wall ratio, success, PSNR.

    python tools/bench_step_cache.py                                   # tiny random model, 4 items, 30 steps
    python tools/bench_step_cache.py --thresholds 0.06 0.12 0.24 --items 8 checkpoint=runs/toy/final
    python tools/bench_step_cache.py --calibration toy.json checkpoint=runs/toy/final sampler.steps=50

Every ``key=value`` is an ``infer/eval.py`` override (checkpoint, sampler.*, reasoning.steps, runtime.*, the
``runtime.step_cache_*`` knobs but the threshold). Without ``--calibration`` the curve is measured first on
``--calib-items`` toy items of another seed (never the benchmarked ones). Each item is edited exactly (every
forward), then once per threshold; per threshold the table gives the share of DiT forwards skipped, the median
of the per-item denoise-time ratios cached / exact, the toy success rate (exact's in the first row), and the
mean PSNR of the cached edit to the exact one (dB, 100 = identical pixels).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.06, 0.12, 0.24, 0.5])
    ap.add_argument("--items", type=int, default=4, help="toy items benchmarked")
    ap.add_argument("--calibration", help="a calibration JSON (default: measured on --calib-items other items)")
    ap.add_argument("--calib-items", type=int, default=2)
    ap.add_argument("overrides", nargs="*", help="infer/eval.py overrides, key=value")
    args = ap.parse_args(argv)
    overrides = ["sampler.steps=30", *args.overrides] if not any(o.startswith("sampler.steps=") for o in
                                                                  args.overrides) else args.overrides  # fmt: skip

    import torch

    from chronoedit.builders import compose_config
    from chronoedit.pipeline.job import build_pipeline
    from chronoedit.sampling.step_cache import Calibration, Calibrator, MagCacheSettings
    from chronoedit.toyworld.eval_config import EvalConfig
    from chronoedit.toyworld.evaluate import _request, score, toy_items
    from chronoedit.toyworld.metrics import psnr
    from chronoedit.toyworld.segment import as_array

    torch.set_num_threads(max(1, torch.get_num_threads()))
    cfg, model_overrides = compose_config(ROOT / "configs", "eval", overrides, EvalConfig)
    rt = cfg.runtime
    pipe = build_pipeline(cfg, model_overrides=model_overrides)
    pipe.progress = False

    if args.calibration:
        calibration = Calibration.load(args.calibration)
    else:
        other = dataclasses.replace(cfg, benchmark=dataclasses.replace(cfg.benchmark, seed=cfg.benchmark.seed + 1000,
                                                                       n=args.calib_items))  # fmt: skip
        pipe.step_cache = Calibrator()
        for item in toy_items(other):
            pipe(_request(other, item), cfg.sampler)
        calibration = pipe.step_cache.calibration({"checkpoint": cfg.checkpoint, "items": args.calib_items})

    def settings(threshold: float | None):
        if threshold is None:
            return None
        return MagCacheSettings(calibration, threshold, rt.step_cache_max_skips, rt.step_cache_retention)

    rows: dict[float | None, dict[str, list]] = {}
    bench = dataclasses.replace(cfg, benchmark=dataclasses.replace(cfg.benchmark, n=args.items))
    for item in toy_items(bench):
        request = _request(bench, item)
        exact = None
        for threshold in [None, *args.thresholds]:
            pipe.step_cache = settings(threshold)
            result = pipe(request, cfg.sampler)
            denoise = next(s.seconds for s in result.profile.stages if s.name == "denoise")
            if exact is None:
                exact = (result, denoise)
            row = rows.setdefault(threshold, {k: [] for k in ("skip", "ratio", "success", "psnr")})
            stats = result.step_cache
            row["skip"].append(stats.skipped / stats.forwards)
            row["ratio"].append(denoise / exact[1])
            row["success"].append(float(bool(score(item, result.image, result.frames).get("success"))))
            row["psnr"].append(psnr(as_array(result.image), as_array(exact[0].image)))
        print(f"{item.name}: done", file=sys.stderr, flush=True)

    print(f"checkpoint={cfg.checkpoint} steps={cfg.sampler.steps} K={rt.step_cache_max_skips} "
          f"retention={rt.step_cache_retention} items={args.items} overrides={args.overrides}")  # fmt: skip
    print("| threshold | forwards skipped | wall ratio (denoise) | success | PSNR to exact edit |")
    print("|---|---|---|---|---|")
    for threshold, row in rows.items():
        name = "exact" if threshold is None else f"{threshold:g}"
        print(f"| {name} | {100 * statistics.mean(row['skip']):.0f}% | {statistics.median(row['ratio']):.2f}× | "
              f"{statistics.mean(row['success']):.2f} | {statistics.mean(row['psnr']):.1f} dB |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
