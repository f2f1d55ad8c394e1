"""Training metrics: one console line and one JSONL record per logged step (the main process only)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

METRICS = "metrics.jsonl"


class MetricsLog:
    """Appends records to ``<run_dir>/metrics.jsonl``. On resume, records after the resumed step (written by the
    interrupted run after its last checkpoint) are dropped first, so the file reads as one uninterrupted run."""

    def __init__(self, run_dir: Path, enabled: bool, resumed_step: int | None = None) -> None:
        self.path = Path(run_dir) / METRICS
        self.enabled = enabled
        if enabled and resumed_step is not None and self.path.is_file():
            kept = [ln for ln in self.path.read_text().splitlines() if ln.strip() and _step(ln) <= resumed_step]
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(ln + "\n" for ln in kept))
            os.replace(tmp, self.path)

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        print(format_record(record), flush=True)


def _step(line: str) -> int:
    try:
        return int(json.loads(line).get("step", -1))
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
        return -1


def format_record(r: dict) -> str:
    def num(v) -> str:
        if isinstance(v, float):
            return f"{v:.4g}" if math.isfinite(v) and v != 0 else str(v)
        return str(v)

    return "  ".join(f"{k} {num(v)}" for k, v in r.items())


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / METRICS
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()] if path.is_file() else []
