"""Summaries of finished edits: a multirun grid image and a timings table."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw

STAGES = ("text", "image", "vae_encode", "denoise", "vae_decode")


def write_sweep_summary(sweep_dir: Path, cell: int = 256) -> list[Path]:
    """``grid.png`` of every run's ``edit.png`` (labelled with its folder name) and ``timings.md``."""
    runs = sorted(
        (p for p in sweep_dir.iterdir() if (p / "summary.json").is_file()),
        key=lambda p: (int(p.name.split("_")[0]) if p.name.split("_")[0].isdigit() else 1 << 30, p.name),
    )
    if not runs:
        return []
    summaries = [json.loads((r / "summary.json").read_text()) for r in runs]
    cols = min(4, len(runs))
    rows = (len(runs) + cols - 1) // cols
    label_h = 28
    grid = Image.new("RGB", (cols * cell, rows * (cell + label_h)), "white")
    draw = ImageDraw.Draw(grid)
    for i, run in enumerate(runs):
        x, y = (i % cols) * cell, (i // cols) * (cell + label_h)
        edit = run / "edit.png"
        if edit.is_file():
            with Image.open(edit) as im:
                thumb = im.convert("RGB")
                thumb.thumbnail((cell, cell))
                grid.paste(thumb, (x + (cell - thumb.width) // 2, y + label_h + (cell - thumb.height) // 2))
        draw.text((x + 4, y + 6), run.name[: cell // 6], fill="black")
    grid_path = sweep_dir / "grid.png"
    grid.save(grid_path)

    header = "| run | " + " | ".join(f"{s} s" for s in STAGES) + " | total s |"
    lines = [header, "|" + "---|" * (len(STAGES) + 2)]
    for run, s in zip(runs, summaries):
        t = s.get("timings", {})
        cells = [f"{t[k]['seconds']:.2f}" if k in t else "–" for k in STAGES]
        lines.append(f"| {run.name} | " + " | ".join(cells) + f" | {s.get('total_seconds', 0):.2f} |")
    table_path = sweep_dir / "timings.md"
    table_path.write_text("\n".join(lines) + "\n")
    return [grid_path, table_path]
