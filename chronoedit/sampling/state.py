"""What a solver carries from one step to the next, as an explicit immutable object that can drop frames.

Every solver's state is a :class:`SolverState`: single-step solvers (Euler, Heun) keep only the frame count,
multistep ones keep their past data predictions; UniPC also keeps the sample its last predictor started from.
Dropping the temporal-reasoning frames is then one call, the same for every solver.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from chronoedit.sampling.schedule import Schedule

FRAME_DIM = 2  # latents are (B, C, F, H, W)

# model(x (B, C, F, H, W), timestep (B,)) -> velocity dx/dσ (B, C, F, H, W)
VelocityFn = Callable[[Tensor, Tensor], Tensor]


def normalize_frames(keep: Sequence[int], num_frames: int) -> list[int]:
    """Indices into ``num_frames`` frames, negatives counted from the end; ValueError on anything else."""
    keep = list(keep)
    if not keep:
        raise ValueError("frame selection is empty")
    bad = [k for k in keep if isinstance(k, bool) or not hasattr(k, "__index__")]
    if bad:
        raise ValueError(f"frame indices must be ints, got {bad}")
    keep = [operator.index(k) for k in keep]
    bad = [k for k in keep if not -num_frames <= k < num_frames]
    if bad:
        raise ValueError(
            f"frame indices {bad} out of range for {num_frames} frames (valid: -{num_frames}..{num_frames - 1})"
        )
    out = [k % num_frames for k in keep]
    if len(set(out)) != len(out):
        raise ValueError(f"frame selection {keep} names a frame twice (of {num_frames} frames)")
    return out


@dataclass(frozen=True, eq=False)
class SolverState:
    """History between steps. Tensors are (B, C, F, H, W) like the sample and are never modified in place."""

    x0_preds: tuple[Tensor, ...] = ()  # past data predictions x − σ·v, oldest first
    x0_sigmas: tuple[float, ...] = ()  # σ at which each of them was made
    last_sample: Tensor | None = None  # UniPC: the sample its last predictor started from (corrector input)
    last_order: int = 0  # UniPC: order of the last predictor step (the corrector's order)
    num_frames: int | None = None  # F of the sample this state belongs to; None before the first step

    def __post_init__(self) -> None:
        if len(self.x0_preds) != len(self.x0_sigmas):
            raise ValueError(f"{len(self.x0_preds)} data predictions but {len(self.x0_sigmas)} sigmas")
        if self.last_sample is not None and not 1 <= self.last_order <= len(self.x0_preds):
            raise ValueError(f"last_order={self.last_order} needs 1..{len(self.x0_preds)} stored predictions")
        if self.num_frames is None and (self.x0_preds or self.last_sample is not None):
            raise ValueError("SolverState holds tensors but no frame count")

    def select_frames(self, keep: Sequence[int]) -> SolverState:
        """The same history restricted to frames ``keep`` (dim 2), e.g. ``[0, -1]`` for the reasoning drop.

        Validates the indices against the frame count once it is known (after the first step)."""
        if self.num_frames is None:  # before the first step: nothing to slice, nothing to check against
            return self
        idx = normalize_frames(keep, self.num_frames)

        def pick(t: Tensor) -> Tensor:
            return t.index_select(FRAME_DIM, torch.tensor(idx, device=t.device))

        return replace(
            self,
            x0_preds=tuple(pick(t) for t in self.x0_preds),
            last_sample=None if self.last_sample is None else pick(self.last_sample),
            num_frames=len(idx),
        )


def select_frames(x: Tensor, state: SolverState, keep: Sequence[int]) -> tuple[Tensor, SolverState]:
    """Drop frames from the sample and the solver history together: ``x[:, :, keep]`` and the same for every
    tensor of the state. Indices are checked against ``x``'s frame count (negative ones allowed)."""
    idx = normalize_frames(keep, x.shape[FRAME_DIM])
    check_state(x, state)
    return x.index_select(FRAME_DIM, torch.tensor(idx, device=x.device)), state.select_frames(keep)


@dataclass(frozen=True)
class FrameDrop:
    """Drop all latent frames but ``keep`` at the top of step ``step`` (before its model call). A step at or past
    the end of the schedule never happens (the released scripts' way of turning the drop off)."""

    step: int
    keep: tuple[int, ...] = (0, -1)

    def __post_init__(self) -> None:
        if isinstance(self.step, bool) or not isinstance(self.step, int) or self.step < 0:
            raise ValueError(f"FrameDrop step={self.step!r} must be an int ≥ 0")
        object.__setattr__(self, "keep", tuple(self.keep))

    def validate(self, num_frames: int) -> None:
        normalize_frames(self.keep, num_frames)

    def __call__(self, i: int, x: Tensor, state: SolverState) -> tuple[Tensor, SolverState]:
        return select_frames(x, state, self.keep) if i == self.step else (x, state)


def check_state(x: Tensor, state: SolverState) -> None:
    """ValueError unless ``state`` belongs to a sample shaped like ``x`` (B, C, F, H, W)."""
    if x.ndim != 5:
        raise ValueError(f"sample must be (B, C, F, H, W), got shape {tuple(x.shape)}")
    if state.num_frames is not None and state.num_frames != x.shape[FRAME_DIM]:
        raise ValueError(
            f"solver state has {state.num_frames} frames but the sample has {x.shape[FRAME_DIM]}: drop frames from "
            "both (select_frames(x, state, keep))"
        )
    for t in (*state.x0_preds, *(() if state.last_sample is None else (state.last_sample,))):
        if t.shape != x.shape:
            raise ValueError(f"solver state tensor {tuple(t.shape)} does not match the sample {tuple(x.shape)}")


def check_step(x: Tensor, sched: Schedule, i: int, state: SolverState) -> None:
    """The checks every solver makes before it calls the model."""
    if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(sched):
        raise ValueError(f"step index i={i!r} out of range for a schedule of {len(sched)} steps")
    check_state(x, state)


def velocity(model: VelocityFn, x: Tensor, sched: Schedule, i: int) -> Tensor:
    """One model call at grid point i with the schedule's timestep broadcast to the batch, as diffusers does."""
    t = sched.timesteps[i].to(x.device).expand(x.shape[0])  # (B,)
    v = model(x, t)
    if v.shape != x.shape:
        raise ValueError(f"model returned velocity {tuple(v.shape)} for a sample {tuple(x.shape)}")
    return v


__all__ = [
    "FRAME_DIM",
    "FrameDrop",
    "SolverState",
    "VelocityFn",
    "check_state",
    "check_step",
    "normalize_frames",
    "select_frames",
    "velocity",
]
