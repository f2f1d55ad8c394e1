"""The README's ChronoEdit-Toy figure: the demo's input, its edit(s), and frames of its reasoning video.

    python infer/edit.py output_dir=/tmp/demo reasoning.steps=16 save_frames=true   # the demo (make demo)
    python infer/edit.py output_dir=/tmp/preset                                     # the preset (no reasoning)
    python tools/make_toy_demo_figure.py /tmp/demo --also /tmp/preset --out docs/toy_demo.png

Row 1: input | every ``--also`` run's edit | the demo's edit (2× nearest-neighbour), each labelled with its
reasoning steps. Row 2: every 4th frame of the demo's 29-frame reasoning video.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from PIL import Image, ImageDraw

PAD, SCALE = 6, 2


def figure(run: Path, also: tuple[Path, ...] = ()) -> Image.Image:
    frames = sorted((run / "frames").glob("*.png"))
    if not frames:
        raise ValueError(f"{run}: no frames/ (run infer/edit.py with save_frames=true)")
    runs = (*also, run)
    summaries = [json.loads((r / "summary.json").read_text()) for r in runs]
    summary = summaries[-1]
    for other, s in zip(also, summaries):
        if s["prompt"] != summary["prompt"]:
            raise ValueError(f"{other}: another prompt than {run}'s")
    first = Image.open(frames[0]).convert("RGB")
    w, h = first.size
    edits = [Image.open(r / "edit.png").convert("RGB") for r in runs]
    big = [im.resize((w * SCALE, h * SCALE), Image.Resampling.NEAREST) for im in (first, *edits)]
    strip = [Image.open(p).convert("RGB") for p in frames[::4]]
    width = max(len(big) * (w * SCALE + PAD) + PAD, len(strip) * (w + PAD) + PAD)
    canvas = Image.new("RGB", (width, h * SCALE + h + 3 * PAD + 40), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((PAD, 2), f'"{summary["prompt"]}"', fill="black")
    for i, im in enumerate(big):
        x = PAD + i * (w * SCALE + PAD)
        canvas.paste(im, (x, 30))
        label = "input (decoded frame 0)" if i == 0 else f"edit, reasoning {summaries[i - 1]['reasoning_steps']} steps"
        draw.text((x, 16), label, fill="black")
    y = 30 + h * SCALE + PAD + 10
    draw.text((PAD, y - 12), f"reasoning video (frames 0, 4, …, {4 * (len(strip) - 1)} of {len(frames)})", fill="black")
    for i, im in enumerate(strip):
        canvas.paste(im, (PAD + i * (w + PAD), y))
    return canvas


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="an infer/edit.py output folder written with save_frames=true")
    p.add_argument("--also", type=Path, nargs="*", default=[], help="more edit.py folders, same prompt (row 1)")
    p.add_argument("--out", type=Path, default=Path("docs/toy_demo.png"))
    args = p.parse_args(argv)
    try:
        im = figure(args.run, tuple(args.also))
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    im.save(args.out)
    print(f"wrote {args.out} ({im.size[0]}×{im.size[1]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
