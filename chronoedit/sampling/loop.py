"""The sampling loop: 20 lines over any solver, with the reasoning-frame drop as an explicit, validated option."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from chronoedit.sampling.schedule import Schedule
from chronoedit.sampling.solvers import Solver
from chronoedit.sampling.state import FRAME_DIM, FrameDrop, SolverState, VelocityFn, check_state

BeforeStep = Callable[[int, Tensor, SolverState], tuple[Tensor, SolverState]]


def sample(
    model: VelocityFn,
    x: Tensor,
    sched: Schedule,
    solver: Solver,
    *,
    drop: FrameDrop | None = None,
    before_step: BeforeStep | None = None,
) -> Tensor:
    """Integrate x (B, C, F, H, W) from ``sched.sigmas[0]`` to ``sched.sigmas[-1]``.

    ``drop``: at the top of step ``drop.step`` keep only frames ``drop.keep`` of the sample and of the solver
    history (validated against x before the first model call). ``before_step(i, x, state) -> (x, state)`` runs
    at the top of every step, after the drop."""
    state = solver.init_state()
    check_state(x, state)
    if drop is not None:
        drop.validate(x.shape[FRAME_DIM])
    for i in range(len(sched)):
        if drop is not None:
            x, state = drop(i, x, state)
        if before_step is not None:
            x, state = before_step(i, x, state)
        x, state = solver.step(model, x, sched, i, state)
    return x


__all__ = ["BeforeStep", "sample"]
