"""Per-stage wall time and peak memory (CUDA allocator peak, or peak RSS on Linux CPU)."""

from __future__ import annotations

import contextlib
import resource
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

_CLEAR_REFS = Path("/proc/self/clear_refs")


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process; False where that is not possible."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_mib() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class StageStats:
    name: str
    seconds: float
    peak_mib: float
    memory_kind: str  # "cuda" (allocator peak) or "rss" (process peak RSS during the stage)


@dataclass
class Profiler:
    device: torch.device
    stages: list[StageStats] = field(default_factory=list)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            _reset_peak_rss()
        t0 = time.perf_counter()
        yield
        if cuda:
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            peak = _peak_rss_mib()
        self.stages.append(StageStats(name, time.perf_counter() - t0, peak, "cuda" if cuda else "rss"))

    def table(self) -> str:
        kind = "peak CUDA MiB" if self.device.type == "cuda" else "peak RSS MiB"
        rows = [f"{'stage':<12} {'seconds':>9} {kind:>14}"]
        rows += [f"{s.name:<12} {s.seconds:9.2f} {s.peak_mib:14.0f}" for s in self.stages]
        rows.append(f"{'total':<12} {sum(s.seconds for s in self.stages):9.2f}")
        return "\n".join(rows)

    def as_dict(self) -> dict[str, dict[str, float]]:
        return {s.name: {"seconds": s.seconds, "peak_mib": s.peak_mib} for s in self.stages}
