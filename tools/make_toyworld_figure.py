"""Draw docs/toyworld_examples.png: toy-world edits of every kind, input | trajectory frames | target.

    python tools/make_toyworld_figure.py [--out docs/toyworld_examples.png] [--per-kind 2] [--seed 0]

Each row is one example of the held-out ("test") stream of the seed, with its prompt above it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from PIL import Image, ImageDraw  # noqa: E402

from chronoedit.toyworld import KINDS, render, sample_example  # noqa: E402
from chronoedit.toyworld.trajectory import FRAMES  # noqa: E402

SHOWN = (0, 7, 14, 21, FRAMES - 1)  # trajectory frames shown: the input, three in between, the target
CELL, GAP, LABEL = 128, 4, 16


def figure(per_kind: int = 2, seed: int = 0, size: int = 128) -> Image.Image:
    examples = [
        sample_example(seed, i * len(KINDS) + k, size, "test") for k in range(len(KINDS)) for i in range(per_kind)
    ]
    width = len(SHOWN) * (CELL + GAP) + GAP
    height = LABEL + len(examples) * (CELL + LABEL + GAP)
    fig = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(fig)
    for c, f in enumerate(SHOWN):
        head = "input" if f == 0 else "target (frame 28)" if f == FRAMES - 1 else f"frame {f}"
        draw.text((GAP + c * (CELL + GAP) + 2, 2), head, fill="black")
    for r, ex in enumerate(examples):
        y = LABEL + r * (CELL + LABEL + GAP)
        draw.text((GAP + 2, y + 2), f"{ex.edit.kind}: {ex.edit.prompt!r}", fill="black")
        for c, f in enumerate(SHOWN):
            im = render(ex.frames[f]).resize((CELL, CELL), Image.Resampling.LANCZOS)
            fig.paste(im, (GAP + c * (CELL + GAP), y + LABEL))
    return fig


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "docs" / "toyworld_examples.png"))
    p.add_argument("--per-kind", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    figure(a.per_kind, a.seed).save(a.out)
    print(a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
