"""Euler, Heun and DPM-Solver++(2M) for rectified flow, and the name → solver registry.

Each solver is a pure step function ``(model, x, sched, i, state) -> (x_next, state)`` plus a frozen dataclass
that binds its options; all share :class:`SolverState`, so the reasoning-frame drop works the same for all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch
from torch import Tensor

from chronoedit.sampling.config import SOLVER_ORDERS, SamplerConfig
from chronoedit.sampling.schedule import Schedule
from chronoedit.sampling.state import SolverState, VelocityFn, check_step, velocity
from chronoedit.sampling.unipc import UniPC, log_snr


def euler_step(model: VelocityFn, x: Tensor, sched: Schedule, i: int, state: SolverState) -> tuple[Tensor, SolverState]:
    """x_{i+1} = x_i + (σ_{i+1} − σ_i)·v(x_i, t_i), as diffusers' ``FlowMatchEulerDiscreteScheduler``."""
    check_step(x, sched, i, state)
    dt = sched.sigma(i + 1) - sched.sigma(i)  # < 0
    return x + dt * velocity(model, x, sched, i), SolverState(num_frames=x.shape[2])


def heun_step(model: VelocityFn, x: Tensor, sched: Schedule, i: int, state: SolverState) -> tuple[Tensor, SolverState]:
    """Heun's trapezoidal step (two model calls; the second at grid point i + 1, so the model sees the next
    step's timestep). The step into σ = 0 is a plain Euler step (one call), as in k-diffusion."""
    check_step(x, sched, i, state)
    if sched.sigma(len(sched)) != 0.0:  # checked on every step, so that it fails before the first model call
        raise ValueError(
            f"heun's last step would need a timestep at its final σ={sched.sigma(len(sched))}; end the schedule at 0"
        )
    dt = sched.sigma(i + 1) - sched.sigma(i)
    v = velocity(model, x, sched, i)
    if i + 1 == len(sched):  # into σ = 0
        return x + dt * v, SolverState(num_frames=x.shape[2])
    v_next = velocity(model, x + dt * v, sched, i + 1)
    return x + dt * (0.5 * (v + v_next)), SolverState(num_frames=x.shape[2])


def dpmpp_2m_step(
    model: VelocityFn, x: Tensor, sched: Schedule, i: int, state: SolverState, *, order: int = 2
) -> tuple[Tensor, SolverState]:
    """DPM-Solver++(2M) (Lu et al. 2022) in data prediction m = x − σ·v, λ = log((1 − σ)/σ), h = λ_{i+1} − λ_i:

        x_{i+1} = (σ_{i+1}/σ_i)·x_i − α_{i+1}·(e^{−h} − 1)·(m_i + (m_i − m_{i−1})/(2r)),  r = h_{i−1}/h,

    first order (the (m_i − m_{i−1}) term left out) on the first step, at ``order=1`` and on the step into σ = 0
    (where it is exactly m_i). Matches diffusers' ``DPMSolverMultistepScheduler`` (dpmsolver++, midpoint) and
    k-diffusion's ``sample_dpmpp_2m``."""
    if order not in SOLVER_ORDERS["dpmpp_2m"]:
        raise ValueError(f"order={order!r} is not an order of dpmpp_2m (has {SOLVER_ORDERS['dpmpp_2m']})")
    check_step(x, sched, i, state)
    sigma, sigma_next = sched.sigma(i), sched.sigma(i + 1)
    m = x - sigma * velocity(model, x, sched, i)  # (B, C, F, H, W) data prediction at σ_i
    new_state = SolverState(x0_preds=(m,), x0_sigmas=(sigma,), num_frames=x.shape[2])
    if sigma_next == 0.0:
        return m.clone(), new_state
    sig, sig_next = (torch.tensor(s, dtype=sched.sigmas.dtype) for s in (sigma, sigma_next))  # scalars, grid dtype
    lam = log_snr(sig)
    h = log_snr(sig_next) - lam
    c_x, c_m = sig_next / sig, (1 - sig_next) * torch.expm1(-h)
    x_next = c_x.item() * x - c_m.item() * m
    if order == 2 and state.x0_preds:
        sig_prev, m_prev = torch.tensor(state.x0_sigmas[-1], dtype=sig.dtype), state.x0_preds[-1]
        r = (lam - log_snr(sig_prev)) / h  # h_{i−1} / h_i
        x_next = x_next - (0.5 * c_m).item() * ((m - m_prev) / r.item())
    return x_next, new_state


class Solver(Protocol):
    """What the sampling loop needs from a solver."""

    name: ClassVar[str]
    model_calls_per_step: ClassVar[int]

    def init_state(self) -> SolverState: ...

    def step(
        self, model: VelocityFn, x: Tensor, sched: Schedule, i: int, state: SolverState
    ) -> tuple[Tensor, SolverState]: ...


@dataclass(frozen=True)
class Euler:
    name: ClassVar[str] = "euler"
    model_calls_per_step: ClassVar[int] = 1

    def init_state(self) -> SolverState:
        return SolverState()

    def step(
        self, model: VelocityFn, x: Tensor, sched: Schedule, i: int, state: SolverState
    ) -> tuple[Tensor, SolverState]:
        return euler_step(model, x, sched, i, state)


@dataclass(frozen=True)
class Heun:
    name: ClassVar[str] = "heun"
    model_calls_per_step: ClassVar[int] = 2

    def init_state(self) -> SolverState:
        return SolverState()

    def step(
        self, model: VelocityFn, x: Tensor, sched: Schedule, i: int, state: SolverState
    ) -> tuple[Tensor, SolverState]:
        return heun_step(model, x, sched, i, state)


@dataclass(frozen=True)
class DPMPP2M:
    order: int = 2
    name: ClassVar[str] = "dpmpp_2m"
    model_calls_per_step: ClassVar[int] = 1

    def __post_init__(self) -> None:
        if self.order not in SOLVER_ORDERS["dpmpp_2m"]:
            raise ValueError(f"order={self.order!r} is not an order of dpmpp_2m (has {SOLVER_ORDERS['dpmpp_2m']})")

    def init_state(self) -> SolverState:
        return SolverState()

    def step(
        self, model: VelocityFn, x: Tensor, sched: Schedule, i: int, state: SolverState
    ) -> tuple[Tensor, SolverState]:
        return dpmpp_2m_step(model, x, sched, i, state, order=self.order)


SOLVERS: dict[str, type] = {"unipc": UniPC, "euler": Euler, "heun": Heun, "dpmpp_2m": DPMPP2M}


def build_solver(config: SamplerConfig) -> Solver:
    """The solver a (validated) :class:`SamplerConfig` names, with its options."""
    if config.name == "unipc":
        return UniPC(order=config.order, solver_type=config.solver_type, lower_order_final=config.lower_order_final)
    if config.name == "dpmpp_2m":
        return DPMPP2M(order=config.order)
    if config.name in SOLVERS:
        return SOLVERS[config.name]()
    raise ValueError(f"unknown sampler name={config.name!r}; known: {sorted(SOLVERS)}")


__all__ = ["DPMPP2M", "SOLVERS", "Euler", "Heun", "Solver", "build_solver", "dpmpp_2m_step", "euler_step", "heun_step"]
