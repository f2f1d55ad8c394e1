"""Draw the example input image shipped with the package (chronoedit/assets/example.png).

    python tools/make_example_image.py [--out chronoedit/assets/example.png]

A small procedural scene (sky, sun, hills, a house, a tree) so the demo needs no downloaded photo.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def draw(width: int = 512, height: int = 384) -> Image.Image:
    y = np.linspace(0, 1, height)[:, None, None]
    sky = (1 - y) * np.array([110, 160, 225]) + y * np.array([200, 225, 245])
    im = Image.fromarray(np.broadcast_to(sky, (height, width, 3)).astype(np.uint8))
    d = ImageDraw.Draw(im)
    d.ellipse((400, 40, 460, 100), fill=(255, 226, 120))  # sun
    d.ellipse((-150, 250, 360, 520), fill=(92, 160, 80))  # hills
    d.ellipse((200, 230, 700, 560), fill=(74, 140, 66))
    d.rectangle((150, 220, 290, 320), fill=(235, 222, 200), outline=(120, 100, 80))  # house
    d.polygon([(135, 222), (220, 160), (305, 222)], fill=(170, 60, 50))  # roof
    d.rectangle((205, 265, 235, 320), fill=(110, 75, 50))  # door
    d.rectangle((165, 240, 190, 262), fill=(150, 200, 235))  # windows
    d.rectangle((250, 240, 275, 262), fill=(150, 200, 235))
    d.rectangle((375, 235, 389, 300), fill=(100, 70, 45))  # tree
    d.ellipse((345, 180, 420, 255), fill=(50, 115, 55))
    return im.filter(ImageFilter.SMOOTH)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "chronoedit/assets/example.png")
    args = p.parse_args()
    draw().save(args.out, optimize=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
