"""The summary of an evaluation sweep (``python infer/eval.py -m key=a,b,…``): every run's headline metrics
against the swept keys, as ``sweep.md`` and ``sweep.csv`` (always) and ``sweep.png`` (one panel per metric, 95%
intervals as error bars; needs matplotlib, ``pip install -e ".[plot]"``, else skipped with a note)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

HEADLINE = ("success", "centroid_error_px", "other_drift_px", "psnr", "traj_error_px")


def _runs(sweep_dir: Path) -> list[tuple[Path, dict]]:
    def order(p: Path) -> tuple[int, str]:
        head = p.name.split("_")[0]
        return (int(head) if head.isdigit() else 1 << 30, p.name)

    runs = sorted((p for p in sweep_dir.iterdir() if (p / "metrics.json").is_file()), key=order)
    return [(p, json.loads((p / "metrics.json").read_text())) for p in runs]


def _swept(metrics: list[dict]) -> list[str]:
    """The override keys whose values differ between runs, in command-line order."""
    values: dict[str, set[str]] = {}
    for m in metrics:
        for o in m.get("overrides", []):
            key, _, value = o.partition("=")
            values.setdefault(key, set()).add(value)
    for m in metrics:  # a key missing from some run's overrides differs too
        keys = {o.partition("=")[0] for o in m.get("overrides", [])}
        for key in values:
            if key not in keys:
                values[key].add("<default>")
    return [k for k, v in values.items() if len(v) > 1]


def _value(m: dict, key: str) -> str:
    return next((o.partition("=")[2] for o in m.get("overrides", []) if o.partition("=")[0] == key), "<default>")


def write_eval_sweep(sweep_dir: Path, metrics: tuple[str, ...] = HEADLINE) -> list[Path]:
    """Write the sweep table (markdown, CSV) and, with matplotlib, the plot; the paths written."""
    runs = _runs(sweep_dir)
    if not runs:
        return []
    ms = [m for _, m in runs]
    keys = _swept(ms) or ["run"]
    shown = [k for k in metrics if any(k in m["overall"] for m in ms)]
    labels = [[_value(m, k) if k != "run" else p.name for k in keys] for p, m in runs]

    def cell(m: dict, k: str) -> str:
        s = m["overall"].get(k)
        return "–" if s is None else f"{s['mean']:.3g} [{s['ci95'][0]:.3g}, {s['ci95'][1]:.3g}]"

    head = [*keys, "n", *shown, "pipeline s/item", "eval s/item"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for lab, m in zip(labels, ms):
        t = m.get("timings", {})
        cells = [*lab, str(m["n"]), *(cell(m, k) for k in shown)]
        cells += [f"{t.get('pipeline_s_per_item', 0):.3f}", f"{t.get('eval_s_per_item', 0):.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    md = sweep_dir / "sweep.md"
    md.write_text("\n".join(lines) + "\n")

    path_csv = sweep_dir / "sweep.csv"
    with open(path_csv, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*keys, "n", *(f"{k}{s}" for k in shown for s in ("", "_lo", "_hi"))])
        for lab, m in zip(labels, ms):
            vals = []
            for k in shown:
                s = m["overall"].get(k)
                vals += ["", "", ""] if s is None else [s["mean"], *s["ci95"]]
            w.writerow([*lab, m["n"], *vals])
    written = [md, path_csv]
    plot = plot_sweep(sweep_dir / "sweep.png", keys, labels, ms, shown)
    if plot is not None:
        written.append(plot)
    return written


def plot_sweep(path: Path, keys: list[str], labels: list[list[str]], ms: list[dict], shown: list[str]) -> Path | None:
    """One panel per metric against the swept key (numeric axis when every value is a number); None without
    matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("sweep.png skipped: matplotlib is not installed (pip install -e '.[plot]'); see sweep.md")
        return None
    xs_text = [", ".join(lab) for lab in labels]
    try:
        xs = [float(x) for x in xs_text] if len(keys) == 1 else None
    except ValueError:
        xs = None
    positions = xs if xs is not None else list(range(len(ms)))
    fig, axes = plt.subplots(1, len(shown), figsize=(3.2 * len(shown), 3.0), squeeze=False)
    for ax, k in zip(axes[0], shown):
        pts = [(x, m["overall"][k]) for x, m in zip(positions, ms) if k in m["overall"]]
        pts = sorted(pts, key=lambda p: p[0]) if xs is not None else pts  # a numeric axis: a line, left to right
        if pts:
            x, s = zip(*pts)
            mean = [v["mean"] for v in s]
            err = [[v["mean"] - v["ci95"][0] for v in s], [v["ci95"][1] - v["mean"] for v in s]]
            ax.errorbar(x, mean, yerr=err, marker="o", capsize=3)
        ax.set_title(k)
        ax.set_xlabel(", ".join(keys))
        if xs is None:
            ax.set_xticks(positions, xs_text, rotation=30, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
