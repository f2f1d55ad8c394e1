"""Flow-matching sampling: schedules, solvers over a velocity function, guidance, and the loop.

sched = flow_schedule(steps=50, shift=5.0)
solver = build_solver(SamplerConfig(name="unipc", steps=50, shift=5.0, order=2))
x = sample(model, noise, sched, solver, drop=FrameDrop(step=k))   # or write the loop with solver.step
"""

from chronoedit.sampling.config import SOLVER_ORDERS, UNIPC_VARIANTS, SamplerConfig
from chronoedit.sampling.guidance import classifier_free_guidance, classifier_free_guidance_batched
from chronoedit.sampling.loop import BeforeStep, sample
from chronoedit.sampling.schedule import FIRST_SIGMA_OFFSET, Schedule, flow_schedule, shift_sigmas
from chronoedit.sampling.solvers import (
    DPMPP2M,
    SOLVERS,
    Euler,
    Heun,
    Solver,
    build_solver,
    dpmpp_2m_step,
    euler_step,
    heun_step,
)
from chronoedit.sampling.state import FRAME_DIM, FrameDrop, SolverState, VelocityFn, select_frames
from chronoedit.sampling.unipc import UniPC, unipc_step

__all__ = [
    "DPMPP2M",
    "FIRST_SIGMA_OFFSET",
    "FRAME_DIM",
    "SOLVERS",
    "SOLVER_ORDERS",
    "UNIPC_VARIANTS",
    "BeforeStep",
    "Euler",
    "FrameDrop",
    "Heun",
    "SamplerConfig",
    "Schedule",
    "Solver",
    "SolverState",
    "UniPC",
    "VelocityFn",
    "build_solver",
    "classifier_free_guidance",
    "classifier_free_guidance_batched",
    "dpmpp_2m_step",
    "euler_step",
    "flow_schedule",
    "heun_step",
    "sample",
    "select_frames",
    "shift_sigmas",
    "unipc_step",
]
