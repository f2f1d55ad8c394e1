"""Step caching (``runtime.step_cache``): skip whole DiT forwards by reusing the block stack's last residual.

MagCache (Ma et al., "MagCache: Fast Video Generation with Magnitude-Aware Cache", arXiv:2506.09045). Let
``r_i = blocks(tokens_i) − tokens_i`` (B, L, D) be the residual the DiT's blocks add to the embedded video
tokens at step i. Its magnitude ratio ``γ_i = mean_tokens(‖r_i‖ / ‖r_{i−1}‖)`` (norms over D) follows a
smooth per-model curve (≈ 1 for most of the trajectory, falling at the end), measured once by
``tools/calibrate_step_cache.py`` on a few edits. At inference a step may reuse the cached residual
``r_c`` of the last computed step c instead of running the blocks: ``out = tokens_i + r_c``, then the head.
The error of doing so is estimated from the curve alone: after skipping to step i the accumulated ratio is
``Π_{c<j≤i} γ_j`` and its error ``|1 − Π γ|`` is summed over the skipped steps; a step is skipped while that
sum stays under ``threshold`` and at most ``max_skips`` (K) consecutive steps are skipped. The first
``retention`` fraction of the steps, the first step after any reset and the last step are always computed.

Decisions in this codebase:

* One decision per step for every CFG branch: the conditional branch's curve decides, and both branches then
  skip together (each reusing its own residual) or are both computed. The unconditional curve is recorded by
  the calibration for reference only. (The reference code decides per branch; one decision keeps the guided
  velocity consistent, cond and uncond from the same step, and makes a skipped step a whole saved step.)
* The reasoning drop (8 → 2 latent frames) changes the token count: the cache resets there (residuals and
  accumulators cleared, that step computed) and never reuses a residual across the drop.
* No calibration, no cache: ``runtime.step_cache=magcache`` without ``runtime.step_cache_calibration`` is an
  error that names the calibration tool. A generic curve would silently transfer one model's numbers to
  another (a random ``tiny`` model's residuals behave nothing like a trained 14B's); the calibration costs
  one un-skipped edit per sample.
* A calibration made for a different number of steps is resampled by nearest neighbour (as the reference
  does); a step count of 1 uses its last value.
* Solvers with one model evaluation per step only (unipc, euler, dpmpp_2m): decisions are made per
  evaluation, and heun's two evaluations per step would not match a per-step curve.

The cache is an explicit per-edit object (:class:`MagCache`) made by :meth:`MagCacheSettings.start`; nothing
is kept on the DiT module. :class:`ResidualRecorder` is the same interface, never skipping, recording γ.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from torch import Tensor

from chronoedit.sampling.state import VelocityFn

if TYPE_CHECKING:
    from chronoedit.models.dit import ChronoEditDiT, ContextCache

STEP_CACHE_METHODS = ("none", "magcache")
CALIBRATION_FORMAT = "chronoedit-magcache-calibration/1"
BRANCHES = ("cond", "uncond", "batched")  # batched: one doubled [cond; uncond] call (decided like the others)
ONE_EVALUATION_SOLVERS = ("unipc", "euler", "dpmpp_2m")


def check_magcache_knobs(threshold: float, max_skips: int, retention: float, prefix: str = "") -> None:
    """One-line ValueErrors naming the offending knob (``prefix`` + threshold / max_skips / retention)."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold < math.inf:
        raise ValueError(f"{prefix}threshold={threshold!r} must be a finite number > 0")
    if isinstance(max_skips, bool) or not isinstance(max_skips, int) or max_skips < 1:
        raise ValueError(f"{prefix}max_skips={max_skips!r} must be an int ≥ 1")
    if isinstance(retention, bool) or not isinstance(retention, (int, float)) or not 0 <= retention < 1:
        raise ValueError(f"{prefix}retention={retention!r} must be a number in [0, 1)")


def resample(values: Sequence[float], steps: int) -> tuple[float, ...]:
    """A per-step curve on ``steps`` steps by nearest neighbour over the same [first, last] span (ties to even,
    as numpy rounds)."""
    n = len(values)
    if steps == 1:
        return (float(values[-1]),)
    return tuple(float(values[round(i * (n - 1) / (steps - 1))]) for i in range(steps))


# ---------------------------------------------------------------------------------------------- calibration
@dataclass(frozen=True)
class Calibration:
    """γ per step (γ_0 = 1: nothing before it) for the conditional branch, and the unconditional one if CFG
    was on. ``meta``: how it was made (checkpoint, sampler, reasoning steps, samples), informational."""

    steps: int
    cond: tuple[float, ...]
    uncond: tuple[float, ...] | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"calibration steps={self.steps!r} must be an int ≥ 1")
        for name in ("cond", "uncond"):
            curve = getattr(self, name)
            if curve is None:
                continue
            curve = tuple(curve)
            if len(curve) != self.steps:
                raise ValueError(f"calibration has {len(curve)} {name} ratios for steps={self.steps}")
            bad = [v for v in curve if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf]
            if bad:
                raise ValueError(f"calibration {name} ratios must be finite numbers > 0, got {bad[:3]}")
            object.__setattr__(self, name, tuple(float(v) for v in curve))

    def for_steps(self, steps: int) -> tuple[float, ...]:
        """The conditional curve (what decides) on a schedule of ``steps`` steps."""
        return self.cond if steps == self.steps else resample(self.cond, steps)

    def to_json(self) -> str:
        d = {"format": CALIBRATION_FORMAT, "method": "magcache", **asdict(self)}
        return json.dumps(d, indent=1) + "\n"

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        """Read a calibration file; every problem is a one-line ValueError naming the file."""
        p = Path(path)
        where = f"runtime.step_cache_calibration={p}"
        if not p.is_file():
            raise ValueError(f"{where}: file not found (make one with tools/calibrate_step_cache.py)")
        try:
            d = json.loads(p.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{where}: not a JSON file ({e})") from e
        if not isinstance(d, dict) or d.get("format") != CALIBRATION_FORMAT or d.get("method") != "magcache":
            raise ValueError(f"{where}: not a MagCache calibration (format {CALIBRATION_FORMAT!r})")
        try:
            return cls(d.get("steps"), d.get("cond") or (), d.get("uncond"), d.get("meta") or {})
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: {e}") from e


# ---------------------------------------------------------------------------------------------- the run
@dataclass
class StepCacheStats:
    """What one edit's step cache did. ``forwards``: DiT calls of the edit (computed + skipped; two per step
    with sequential CFG, one with batched CFG or without CFG); ``skipped``: those that reused the residual."""

    method: str
    forwards: int = 0
    skipped: int = 0
    skipped_steps: list[int] = field(default_factory=list)
    resets: int = 0  # shape changes (the reasoning drop) that cleared the cache

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class StepCache(Protocol):
    """A per-edit cache: ``begin_step(x)`` once per model evaluation (the guided velocity), then ``forward``
    once per DiT call of that evaluation (per CFG branch)."""

    stats: StepCacheStats

    def begin_step(self, x: Tensor) -> None: ...

    def forward(
        self,
        dit: ChronoEditDiT,
        branch: str,
        x: Tensor,
        t: Tensor,
        context: Tensor,
        clip: Tensor | None,
        lens: Tensor | None,
        cache: ContextCache | None,
    ) -> Tensor: ...


def guided_with(step_cache: StepCache, guided: VelocityFn) -> VelocityFn:
    """The velocity function that tells ``step_cache`` a new evaluation starts, then evaluates ``guided``."""

    def fn(x: Tensor, t: Tensor) -> Tensor:
        step_cache.begin_step(x)
        return guided(x, t)

    return fn


def _embed(dit: ChronoEditDiT, x, t, context, clip, lens, cache: ContextCache | None, need_context: bool):
    """ChronoEditDiT.forward's stage 1 (and the RoPE table): tokens (B, L, D), e (B, D), e0 (B, 6, D), the
    context the blocks read and the RoPE rows. ``need_context=False`` (a skipped step): tokens and e only."""
    from chronoedit.models.dit import ChronoEditDiT

    if not isinstance(dit, ChronoEditDiT):  # e.g. the sequence-parallel wrapper: its stages run on shards
        raise ValueError(f"runtime.step_cache runs on a single-process ChronoEditDiT, not a {type(dit).__name__}")
    dit.check_inputs(x, t, context, clip, lens)
    grid = dit.token_grid(x)
    if not need_context:
        tokens, e, e0 = dit.embed_tokens(x, t)
        return grid, tokens, e, e0, None, None, None
    if cache is None:
        tokens, e, e0, ctx, img = dit.embed(x, t, context, clip, lens)
        return grid, tokens, e, e0, ctx, img, dit.rope(grid, x.device)
    (tokens, e, e0), img = dit.embed_tokens(x, t), None
    return grid, tokens, e, e0, cache.kv(dit, context, clip, lens), img, cache.rope(dit, grid, x.device)


def _check_branch(branch: str) -> None:
    if branch not in BRANCHES:
        raise ValueError(f"step cache branch={branch!r} is not one of {BRANCHES}")


class ExactForward:
    """``runtime.step_cache=none``: every DiT call is ``dit.forward`` itself (today's numbers, bit for bit);
    only counts the calls."""

    def __init__(self) -> None:
        self.stats = StepCacheStats("none")

    def begin_step(self, x: Tensor) -> None:
        pass

    def forward(
        self,
        dit: ChronoEditDiT,
        branch: str,
        x: Tensor,
        t: Tensor,
        context: Tensor,
        clip: Tensor | None,
        lens: Tensor | None,
        cache: ContextCache | None,
    ) -> Tensor:
        _check_branch(branch)
        self.stats.forwards += 1
        return dit(x, t, context, clip, lens, cache=cache)


@dataclass(frozen=True)
class NoStepCache:
    """``runtime.step_cache=none`` as settings: :meth:`start` makes an :class:`ExactForward`."""

    method = "none"

    def start(self, num_steps: int, solver: str) -> ExactForward:
        return ExactForward()


class MagCache:
    """One edit's MagCache: residuals per branch, the accumulators, the counts. See the module docstring."""

    def __init__(self, settings: MagCacheSettings, num_steps: int) -> None:
        self.s = settings
        self.num_steps = num_steps
        self.ratios = settings.calibration.for_steps(num_steps)  # γ_i, i = 0 … num_steps − 1
        self.retained = max(1, int(num_steps * settings.retention))  # steps 0 … retained − 1 always computed
        self.stats = StepCacheStats("magcache")
        self.step = -1  # index of the current evaluation
        self.skip = False  # the decision of the current step, for every branch
        self._residual: dict[str, Tensor] = {}  # branch -> (B, L, D) of the last computed step
        self._shape: tuple[int, ...] | None = None
        self._reset_accumulators()

    def _reset_accumulators(self) -> None:
        self.acc_ratio, self.acc_err, self.acc_steps = 1.0, 0.0, 0

    def begin_step(self, x: Tensor) -> None:
        self.step += 1
        i = self.step
        if i >= self.num_steps:
            raise ValueError(f"step cache made for {self.num_steps} evaluations got evaluation {i + 1}")
        if self._shape is not None and tuple(x.shape) != self._shape:  # the reasoning drop: never reuse across it
            self._residual.clear()
            self._reset_accumulators()
            self.stats.resets += 1
        self._shape = tuple(x.shape)
        self.skip = False
        if i < self.retained or i == self.num_steps - 1 or not self._residual:
            return
        self.acc_ratio *= self.ratios[i]  # γ from the cached step to this one
        self.acc_steps += 1
        self.acc_err += abs(1.0 - self.acc_ratio)
        if self.acc_err < self.s.threshold and self.acc_steps <= self.s.max_skips:
            self.skip = True
            self.stats.skipped_steps.append(i)
        else:
            self._reset_accumulators()

    def forward(
        self,
        dit: ChronoEditDiT,
        branch: str,
        x: Tensor,
        t: Tensor,
        context: Tensor,
        clip: Tensor | None,
        lens: Tensor | None,
        cache: ContextCache | None,
    ) -> Tensor:
        """The DiT on ``x (B, C_in, F, H, W)`` as ``dit.forward`` computes it, the blocks replaced by the cached
        residual on a skipped step -> (B, C_out, F, H, W)."""
        _check_branch(branch)
        if self.step < 0:
            raise RuntimeError("MagCache.forward before begin_step")
        skip = self.skip
        grid, tokens, e, e0, ctx, img, rope = _embed(dit, x, t, context, clip, lens, cache, need_context=not skip)
        self.stats.forwards += 1
        if skip:
            residual = self._residual.get(branch)
            if residual is None or residual.shape != tokens.shape:
                raise RuntimeError(f"no cached residual of shape {tuple(tokens.shape)} for branch {branch!r}")
            out = tokens + residual  # (B, L, D)
            self.stats.skipped += 1
        else:
            out = dit.run_blocks(tokens, e0, ctx, img, rope)  # (B, L, D)
            self._residual[branch] = out - tokens
        return dit.unpatchify(dit.head(out, e), grid)


@dataclass(frozen=True)
class MagCacheSettings:
    """``runtime.step_cache=magcache`` with its knobs and the loaded calibration; :meth:`start` makes the
    per-edit :class:`MagCache`."""

    calibration: Calibration
    threshold: float = 0.12  # the reference's default for Wan2.1
    max_skips: int = 2
    retention: float = 0.2

    method = "magcache"

    def __post_init__(self) -> None:
        check_magcache_knobs(self.threshold, self.max_skips, self.retention, prefix="step_cache_")

    def start(self, num_steps: int, solver: str) -> MagCache:
        if solver not in ONE_EVALUATION_SOLVERS:
            raise ValueError(
                f"runtime.step_cache=magcache needs a solver with one model evaluation per step "
                f"{ONE_EVALUATION_SOLVERS}, not sampler.name={solver!r}"
            )
        return MagCache(self, num_steps)


# ---------------------------------------------------------------------------------------------- calibration run
class ResidualRecorder:
    """Never skips; records γ_i = mean(‖r_i‖ / ‖r_{i−1}‖) per step and branch (fp32, norms over D, mean over
    batch and tokens). Across a shape change (the reasoning drop) there is no previous residual of that shape:
    γ is recorded as 1 there (the cache resets at that step and never reads it)."""

    def __init__(self, num_steps: int) -> None:
        self.num_steps = num_steps
        self.stats = StepCacheStats("none")
        self.step = -1
        self.ratios: dict[str, list[float]] = {}
        self._last: dict[str, Tensor] = {}

    def begin_step(self, x: Tensor) -> None:
        self.step += 1

    def forward(
        self,
        dit: ChronoEditDiT,
        branch: str,
        x: Tensor,
        t: Tensor,
        context: Tensor,
        clip: Tensor | None,
        lens: Tensor | None,
        cache: ContextCache | None,
    ) -> Tensor:
        _check_branch(branch)
        grid, tokens, e, e0, ctx, img, rope = _embed(dit, x, t, context, clip, lens, cache, need_context=True)
        out = dit.run_blocks(tokens, e0, ctx, img, rope)  # (B, L, D)
        residual = (out - tokens).float()
        self.stats.forwards += 1
        if branch == "batched":  # [cond; uncond] on dim 0
            for name, r in zip(("cond", "uncond"), residual.chunk(2, dim=0)):
                self._record(name, r)
        else:
            self._record(branch, residual)
        return dit.unpatchify(dit.head(out, e), grid)

    def _record(self, branch: str, residual: Tensor) -> None:
        curve = self.ratios.setdefault(branch, [])
        if len(curve) != self.step:
            raise RuntimeError(f"branch {branch!r} called {len(curve) + 1} times by evaluation {self.step + 1}")
        last = self._last.get(branch)
        if last is None or last.shape != residual.shape:
            curve.append(1.0)
        else:
            curve.append((residual.norm(dim=-1) / last.norm(dim=-1).clamp_min(1e-12)).mean().item())
        self._last[branch] = residual
        if self.step == self.num_steps - 1:  # the edit is over: keep only the curve
            del self._last[branch]


class Calibrator:
    """Stands in for :class:`MagCacheSettings` on a pipeline: every edit runs un-skipped under a
    :class:`ResidualRecorder`; :meth:`calibration` averages the recorded curves over the edits."""

    method = "none"

    def __init__(self) -> None:
        self.runs: list[ResidualRecorder] = []

    def start(self, num_steps: int, solver: str) -> ResidualRecorder:
        self.runs.append(ResidualRecorder(num_steps))
        return self.runs[-1]

    def calibration(self, meta: dict | None = None) -> Calibration:
        if not self.runs:
            raise ValueError("no edits were recorded")
        steps = {r.num_steps for r in self.runs}
        if len(steps) != 1:
            raise ValueError(f"the recorded edits have different step counts {sorted(steps)}")
        (n,) = steps

        def mean(branch: str) -> tuple[float, ...] | None:
            curves = [r.ratios[branch] for r in self.runs if branch in r.ratios]
            if not curves:
                return None
            return tuple(sum(c[i] for c in curves) / len(curves) for i in range(n))

        return Calibration(n, mean("cond"), mean("uncond"), {**(meta or {}), "samples": len(self.runs)})


__all__ = [
    "BRANCHES",
    "CALIBRATION_FORMAT",
    "ONE_EVALUATION_SOLVERS",
    "STEP_CACHE_METHODS",
    "Calibration",
    "Calibrator",
    "ExactForward",
    "MagCache",
    "MagCacheSettings",
    "NoStepCache",
    "ResidualRecorder",
    "StepCache",
    "StepCacheStats",
    "check_magcache_knobs",
    "guided_with",
    "resample",
]
