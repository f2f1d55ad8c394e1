"""UniPC (Zhao et al. 2023, "UniPC: a unified predictor-corrector framework") for rectified flow.

Data-prediction form with α = 1 − σ and λ = log(α/σ). From a model velocity v at x_σ the data prediction is
m = x − σ·v. One step from s0 to t, h = λ_t − λ_s0, with earlier points s_k at r_k = (λ_{s_k} − λ_{s0}) / h:

    x_t = (σ_t/σ_s0)·x_s0 − α_t·(e^{−h} − 1)·m_s0 − α_t·B(h)·Σ_k ρ_k·(m_{s_k} − m_s0)/r_k

B(h) = −h ("bh1") or e^{−h} − 1 ("bh2"); the ρ solve the order conditions Σ_k ρ_k r_k^{n−1} = b_n with
b_n = n!·(−h)·φ_{n+1}(−h) / B(h). The predictor UniP-p uses the p − 1 previous points (ρ = ½ at p = 2);
once the model has been evaluated at t the corrector UniC-p redoes the step from s0 with t itself as an extra
point (r = 1; ρ = ½ at p = 1), which raises the order by one at the cost of no extra model call.
These are the updates of diffusers' ``UniPCMultistepScheduler`` with ``predict_x0=True``. The scalar
coefficients are 0-dim tensors in the schedule's dtype: float32 for :func:`flow_schedule`, which reproduces the
reference bit for bit (its order-3 coefficients lose about three digits to cancellation in b_3 at 50 steps;
``flow_schedule(..., dtype=torch.float64)`` gives float64 coefficients on the unrounded grid).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from chronoedit.sampling.config import SOLVER_ORDERS, UNIPC_VARIANTS
from chronoedit.sampling.schedule import Schedule
from chronoedit.sampling.state import SolverState, VelocityFn, check_step, velocity


def log_snr(sigma: Tensor) -> Tensor:
    """λ = log(1 − σ) − log(σ), elementwise: +∞ at σ = 0, −∞ at σ = 1."""
    return torch.log(1 - sigma) - torch.log(sigma)


def unipc_coefficients(
    sigma_s0: Tensor, sigma_t: Tensor, prev_sigmas: list[Tensor], variant: str, corrector: bool
) -> tuple[Tensor, Tensor, Tensor, list[Tensor], list[Tensor]]:
    """Scalars of one UniP (predictor) or UniC (corrector) update of order p = len(prev_sigmas) + 1, as 0-dim
    tensors in the sigmas' dtype.

    ``prev_sigmas``: σ of the points before s0, most recent first. Returns (c_x, c_m, c_d, ρ, r) for
    x_t = c_x·x_s0 − c_m·m_s0 − c_d·Σ_k ρ_k·(m_k − m_s0)/r_k, where for the corrector the last (ρ, r = 1) pair
    belongs to the new point t."""
    lam_s0 = log_snr(sigma_s0)
    h = log_snr(sigma_t) - lam_s0
    alpha_t = 1 - sigma_t
    phi1 = torch.expm1(-h)  # (−h)·φ₁(−h) = e^{−h} − 1
    bh = -h if variant == "bh1" else phi1
    c_x, c_m, c_d = sigma_t / sigma_s0, alpha_t * phi1, alpha_t * bh
    p = len(prev_sigmas) + 1
    r = [(log_snr(s) - lam_s0) / h for s in prev_sigmas]  # < 0: earlier points
    if corrector:
        r.append(torch.ones_like(h))
    b, g, fact = [], phi1 / -h - 1, 1  # g_n = (−h)·φ_{n+1}(−h) by φ_{n+1}(z) = (φ_n(z) − 1/n!)/z; fact = n!
    for n in range(1, p + 1):
        b.append(g * fact / bh)
        fact *= n + 1
        g = g / -h - 1 / fact
    n_rho = p if corrector else p - 1
    if n_rho == 0:
        rho = []
    elif n_rho == 1 and (corrector or p == 2):  # UniC-1 and UniP-2 use ρ = ½ (the limit of b_1 as h → 0)
        rho = [torch.full_like(h, 0.5)]
    else:  # Vandermonde system Σ_k ρ_k r_k^n = b_{n+1}, n = 0..n_rho − 1
        vander = torch.stack([torch.stack(r[:n_rho]) ** n for n in range(n_rho)])  # (n_rho, n_rho)
        rho = list(torch.linalg.solve(vander, torch.stack(b[:n_rho])).unbind())
    return c_x, c_m, c_d, rho, r


def _update(x: Tensor, m0: Tensor, others: list[Tensor], coefficients: tuple) -> Tensor:
    """x_t = c_x·x − c_m·m0 − c_d·Σ_k ρ_k·D_k with divided differences D_k = (m_k − m0)/r_k, all (B, C, F, H, W)."""
    c_x, c_m, c_d, rho, r = coefficients
    out = c_x.item() * x - c_m.item() * m0
    if rho:
        res = sum(rho_k.item() * ((m - m0) / r_k.item()) for rho_k, m, r_k in zip(rho, others, r))
        out = out - c_d.item() * res
    return out


def unipc_step(
    model: VelocityFn,
    x: Tensor,
    sched: Schedule,
    i: int,
    state: SolverState,
    *,
    order: int = 2,
    variant: str = "bh2",
    lower_order_final: bool = True,
) -> tuple[Tensor, SolverState]:
    """One UniPC step from σ_i to σ_{i+1}: one model call, corrector on x (if a previous step exists), then the
    predictor. Order ramps up with the history, drops to min(order, N − i) at the end with ``lower_order_final``,
    and is 1 on the step into σ = 0 (where the multistep terms diverge)."""
    if order not in SOLVER_ORDERS["unipc"]:
        raise ValueError(f"order={order!r} is not an order of unipc (has {SOLVER_ORDERS['unipc']})")
    if variant not in UNIPC_VARIANTS:
        raise ValueError(f"variant={variant!r} is not one of {UNIPC_VARIANTS}")
    check_step(x, sched, i, state)
    sigma, sigma_next = sched.sigma(i), sched.sigma(i + 1)
    if not sigma < 1.0:
        raise ValueError(f"unipc needs σ < 1 at every step (log(1 − σ) is −∞), got σ_{i}={sigma}")

    m = x - sigma * velocity(model, x, sched, i)  # (B, C, F, H, W) data prediction at σ_i

    def scalar(s: float) -> Tensor:  # coefficient arithmetic in the grid's dtype, on the CPU
        return torch.tensor(s, dtype=sched.sigmas.dtype)

    if state.last_sample is not None:  # UniC: redo the last step now that m(σ_i) is known
        p = state.last_order
        prev = list(zip(state.x0_sigmas[-p:-1], state.x0_preds[-p:-1]))[::-1]  # most recent first
        coef = unipc_coefficients(
            scalar(state.x0_sigmas[-1]), scalar(sigma), [scalar(s) for s, _ in prev], variant, corrector=True
        )
        x = _update(state.last_sample, state.x0_preds[-1], [t for _, t in prev] + [m], coef)

    preds, sigmas = (*state.x0_preds, m)[-order:], (*state.x0_sigmas, sigma)[-order:]
    p = min(order, len(preds), len(sched) - i if lower_order_final else order)
    if sigma_next == 0.0:
        p, x_next = 1, m.clone()  # the order-1 update into σ = 0 is exactly m
    else:
        prev = list(zip(sigmas[-p:-1], preds[-p:-1]))[::-1]
        coef = unipc_coefficients(scalar(sigma), scalar(sigma_next), [scalar(s) for s, _ in prev], variant, False)
        x_next = _update(x, m, [t for _, t in prev], coef)
    return x_next, SolverState(x0_preds=preds, x0_sigmas=sigmas, last_sample=x, last_order=p, num_frames=x.shape[2])


@dataclass(frozen=True)
class UniPC:
    """UniPC-p with B(h) variant ``solver_type`` (bh2 in ChronoEdit); the pipeline's default solver."""

    order: int = 2
    solver_type: str = "bh2"
    lower_order_final: bool = True
    name: ClassVar[str] = "unipc"
    model_calls_per_step: ClassVar[int] = 1

    def __post_init__(self) -> None:
        if self.order not in SOLVER_ORDERS["unipc"]:
            raise ValueError(f"order={self.order!r} is not an order of unipc (has {SOLVER_ORDERS['unipc']})")
        if self.solver_type not in UNIPC_VARIANTS:
            raise ValueError(f"solver_type={self.solver_type!r} is not one of {UNIPC_VARIANTS}")

    def init_state(self) -> SolverState:
        return SolverState()

    def step(
        self, model: VelocityFn, x: Tensor, sched: Schedule, i: int, state: SolverState
    ) -> tuple[Tensor, SolverState]:
        return unipc_step(
            model,
            x,
            sched,
            i,
            state,
            order=self.order,
            variant=self.solver_type,
            lower_order_final=self.lower_order_final,
        )


__all__ = ["UniPC", "log_snr", "unipc_coefficients", "unipc_step"]
