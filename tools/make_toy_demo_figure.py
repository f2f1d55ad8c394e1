"""The README's ChronoEdit-Toy figure: the demo's input, its edit, and frames of its reasoning video.

    python infer/edit.py output_dir=/tmp/demo save_frames=true overwrite=true     # the demo, frames kept
    python tools/make_toy_demo_figure.py /tmp/demo --out docs/toy_demo.png

Row 1: input | edit (2× nearest-neighbour). Row 2: every 4th frame of the 29-frame reasoning video.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from PIL import Image, ImageDraw

PAD, SCALE = 6, 2


def figure(run: Path) -> Image.Image:
    frames = sorted((run / "frames").glob("*.png"))
    if not frames:
        raise ValueError(f"{run}: no frames/ (run infer/edit.py with save_frames=true)")
    summary = json.loads((run / "summary.json").read_text())
    first, edit = Image.open(frames[0]).convert("RGB"), Image.open(run / "edit.png").convert("RGB")
    w, h = first.size
    big = [im.resize((w * SCALE, h * SCALE), Image.Resampling.NEAREST) for im in (first, edit)]
    strip = [Image.open(p).convert("RGB") for p in frames[::4]]
    width = max(2 * w * SCALE + 3 * PAD, len(strip) * (w + PAD) + PAD)
    canvas = Image.new("RGB", (width, h * SCALE + h + 3 * PAD + 28), "white")
    draw = ImageDraw.Draw(canvas)
    for i, im in enumerate(big):
        canvas.paste(im, (PAD + i * (w * SCALE + PAD), 18))
    draw.text((PAD, 2), "input", fill="black")
    draw.text((2 * PAD + w * SCALE, 2), f'edit: "{summary["prompt"]}"', fill="black")
    y = 18 + h * SCALE + PAD + 10
    draw.text((PAD, y - 12), f"reasoning video (frames 0, 4, …, {4 * (len(strip) - 1)} of {len(frames)})", fill="black")
    for i, im in enumerate(strip):
        canvas.paste(im, (PAD + i * (w + PAD), y))
    return canvas


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="an infer/edit.py output folder written with save_frames=true")
    p.add_argument("--out", type=Path, default=Path("docs/toy_demo.png"))
    args = p.parse_args(argv)
    try:
        im = figure(args.run)
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    im.save(args.out)
    print(f"wrote {args.out} ({im.size[0]}×{im.size[1]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
