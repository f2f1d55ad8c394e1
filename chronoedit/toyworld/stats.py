"""95% confidence intervals and per-kind summaries of metric rows.

Success rates (booleans) get the Wilson score interval; means get Student's t interval (normal beyond 30
degrees of freedom, via a Cornish–Fisher correction). A metric that is None in a row (not measurable there, e.g.
the angle of a move) is left out of that metric's n.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Z95 = 1.959963984540054
# Student's t 0.975 quantiles for 1..30 degrees of freedom.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)  # fmt: skip


def t975(df: int) -> float:
    if df < 1:
        raise ValueError(f"a t interval needs df >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = Z95
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def wilson(successes: int, n: int) -> tuple[float, float]:
    """The Wilson score 95% interval of a proportion."""
    if n == 0:
        return (0.0, 1.0)
    p, z2 = successes / n, Z95**2
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    lo = 0.0 if successes == 0 else max(0.0, centre - half)  # exact ends (no 1e-17 rounding residue)
    return (lo, 1.0 if successes == n else min(1.0, centre + half))


def mean_ci(values: Sequence[float]) -> tuple[float, float]:
    """Student's t 95% interval of a mean (a point for n = 1)."""
    n = len(values)
    m = sum(values) / n
    if n == 1:
        return (m, m)
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
    half = t975(n - 1) * sd / math.sqrt(n)
    return (m - half, m + half)


def summarize(values: Sequence) -> dict | None:
    """{"mean", "ci95", "n"} of one metric's values (None entries dropped); None when nothing was measured."""
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    if all(isinstance(v, bool) for v in vals):
        k = sum(vals)
        return {"mean": k / len(vals), "ci95": list(wilson(k, len(vals))), "n": len(vals), "interval": "wilson"}
    vals = [float(v) for v in vals]
    return {"mean": sum(vals) / len(vals), "ci95": list(mean_ci(vals)), "n": len(vals), "interval": "t"}


def summarize_rows(rows: Sequence[dict], metrics: Sequence[str]) -> dict:
    """``{"overall": {metric: summary}, "by_kind": {kind: {metric: summary}}}`` over metric rows."""

    def block(rs: Sequence[dict]) -> dict:
        out = {m: summarize([r.get(m) for r in rs]) for m in metrics}
        return {"n": len(rs), **{m: s for m, s in out.items() if s is not None}}

    kinds = sorted({r["kind"] for r in rows if r.get("kind")})
    return {"overall": block(rows), "by_kind": {k: block([r for r in rows if r.get("kind") == k]) for k in kinds}}
