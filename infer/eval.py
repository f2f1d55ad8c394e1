"""Evaluate edits on a benchmark.  python infer/eval.py key=value …   (every key: configs/eval.yaml)

    python infer/eval.py                                         # the toy world's held-out split, tiny model
    python infer/eval.py checkpoint=runs/toy/... benchmark.n=600 benchmark.size=128
    python infer/eval.py benchmark.baseline=copy_input           # reference rows, no model: also =truth;
                                                                # =vae_roundtrip: the truth through the VAE
    python infer/eval.py benchmark.path=data/toy_test/truth.jsonl # any items file (targets optional)
    python infer/eval.py -m reasoning.steps=0,5,50 sampler.steps=50   # a sweep: sweep.md, sweep.csv, sweep.png

Writes into output_dir: results.jsonl (one row per item), metrics.json (per kind and overall, 95% intervals,
timings), grid.png (input | edit | truth), edits/, config.yaml. The edit keys are those of infer/edit.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from chronoedit import builders  # noqa: E402
from chronoedit.builders import preflight, register, to_object  # noqa: E402
from chronoedit.toyworld.eval_config import EvalConfig  # noqa: E402

register()


def check(cfg: EvalConfig) -> None:
    """The checks that need no model (items readable, baseline possible, sizes), before Hydra starts."""
    from chronoedit.toyworld.evaluate import check_inputs

    check_inputs(cfg)


@hydra.main(version_base="1.3", config_path="../configs", config_name="eval")
def main(cfg: DictConfig) -> None:
    from chronoedit.checkpoint.errors import CheckpointError
    from chronoedit.toyworld.evaluate import run_eval

    hc = HydraConfig.get()
    ev = to_object(cfg, EvalConfig)
    if hc.mode == RunMode.MULTIRUN and ev.output_dir is not None:
        raise SystemExit("error: output_dir cannot be set in a multirun (each run gets its own sweep folder)")
    out = Path(ev.output_dir) if ev.output_dir else Path(hc.runtime.output_dir)
    task = list(hc.overrides.task)
    pick = getattr(builders, "model_overrides", None)  # the model.* keys given explicitly (where supported)
    try:
        summary = run_eval(ev, out, task, pick(task, ev.model) if pick is not None else None)
    except (ValueError, CheckpointError) as e:  # bad input: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    overall = summary["overall"]
    print(json.dumps({"output_dir": str(out), "n": summary["n"], "success": overall.get("success"),
                      "timings": summary["timings"]}))  # fmt: skip


if __name__ == "__main__":
    error = preflight(ROOT / "configs", "eval", sys.argv[1:], schema=EvalConfig, check=check)
    if error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    main()
