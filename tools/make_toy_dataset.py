"""Write a toy-world dataset in the training format (metadata.jsonl + PNG pairs + 29-frame clips) with its truth.

    python tools/make_toy_dataset.py --out data/toy_train --n 20000 --seed 0 --workers 2
    python tools/make_toy_dataset.py --out data/toy_test --n 600 --seed 1 --split test --clip-ratio 0
    python train/preencode.py dataset=data/toy_train output=data/toy_train_cache height=128 width=128
    python infer/eval.py benchmark.path=data/toy_test/truth.jsonl        # a written test split, evaluated

Files: see chronoedit/toyworld/dataset.py. Prints the counts and the examples written per second.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from chronoedit.toyworld.dataset import DatasetSpec, write_dataset  # noqa: E402
from chronoedit.toyworld.world import CANVASES  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="the dataset folder (refused when not empty, unless --overwrite)")
    p.add_argument("--n", type=int, required=True, help="number of examples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=128, choices=CANVASES, help="canvas side in px")
    p.add_argument("--clip-ratio", type=float, default=0.3, help="share of examples written as 29-frame clips")
    p.add_argument("--split", default="train", choices=["train", "test"], help="disjoint random streams")
    p.add_argument("--supersample", type=int, default=4, help="anti-aliasing factor (1 = hard edges)")
    p.add_argument("--workers", type=int, default=1, help="processes (the bytes do not depend on it)")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty folder")
    a = p.parse_args(argv)
    try:
        spec = DatasetSpec(a.n, a.seed, a.size, a.clip_ratio, a.split, a.supersample)
        summary = write_dataset(a.out, spec, workers=a.workers, overwrite=a.overwrite)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"out": a.out, **summary}))
    print(f"{summary['n']} examples in {summary['seconds']:.1f} s: {summary['examples_per_s']:.1f} examples/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
