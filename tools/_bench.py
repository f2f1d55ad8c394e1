"""Shared plumbing for the benchmark scripts: subprocess workers, peak RSS, alternating rounds, a table.

Each measurement runs in a fresh process (``ru_maxrss`` only grows within a process), the two
implementations alternate (A B A B …) so drift on a shared machine hits both, and ratios are taken pair
by pair and summarised by their median.
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
from collections.abc import Sequence


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def emit(result: dict) -> None:
    """A worker's last stdout line: its JSON result."""
    print("RESULT " + json.dumps(result), flush=True)


def run_worker(argv: Sequence[str]) -> dict:
    proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {' '.join(argv)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    return json.loads(lines[-1][len("RESULT ") :])


def alternate(workers: dict[str, list[str]], rounds: int) -> dict[str, list[dict]]:
    """Run each named worker once per round, in turn; returns every result per name."""
    results: dict[str, list[dict]] = {name: [] for name in workers}
    for r in range(rounds):
        for name, argv in workers.items():
            res = run_worker(argv)
            results[name].append(res)
            print(
                f"  round {r + 1}/{rounds} {name:>18}: {res['seconds']:.3f} s, peak RSS {res['peak_rss_mib']:.0f} MiB"
            )
    return results


def summarize(results: dict[str, list[dict]], reference: str) -> str:
    """A table: median seconds, median ratio to ``reference`` (pairwise), peak RSS and its ratio."""
    ref_t = [r["seconds"] for r in results[reference]]
    ref_m = statistics.median(r["peak_rss_mib"] for r in results[reference])
    rows = [f"{'implementation':>18} | {'median s':>9} | {'time ratio':>10} | {'peak RSS MiB':>12} | {'RSS ratio':>9}"]
    rows.append("-" * len(rows[0]))
    for name, res in results.items():
        t = [r["seconds"] for r in res]
        m = statistics.median(r["peak_rss_mib"] for r in res)
        ratio = statistics.median(a / b for a, b in zip(t, ref_t))
        rows.append(f"{name:>18} | {statistics.median(t):9.3f} | {ratio:10.3f} | {m:12.0f} | {m / ref_m:9.3f}")
    return "\n".join(rows)
