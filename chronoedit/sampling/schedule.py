"""Sigma grids for rectified-flow sampling, as pure functions.

Convention: x_σ = (1 − σ)·x₀ + σ·ε, σ = 1 is pure noise and σ = 0 data; the model predicts the velocity
v = dx/dσ = ε − x₀ and is conditioned on the timestep t = σ · num_train_timesteps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

# diffusers moves a first sigma of exactly 1 down by this much, so that log(α) = log(1 − σ) stays finite.
FIRST_SIGMA_OFFSET = 1e-6


@dataclass(frozen=True, eq=False)
class Schedule:
    """The grid a sampler walks: step i goes from ``sigmas[i]`` to ``sigmas[i + 1]`` and evaluates the model at
    ``timesteps[i]``. ``sigmas`` (N+1,) decreasing in [0, 1]; ``timesteps`` (N,) in the dtype the model gets
    (int64 from :func:`flow_schedule`, as diffusers gives the DiT; float for analytic tests). Sigmas live on
    the CPU; each timestep is moved to the sample's device when the model is called."""

    sigmas: Tensor  # (N+1,)
    timesteps: Tensor  # (N,)

    def __post_init__(self) -> None:
        s, t = self.sigmas, self.timesteps
        if s.ndim != 1 or t.ndim != 1 or s.numel() != t.numel() + 1 or t.numel() < 1:
            raise ValueError(
                f"Schedule needs sigmas (N+1,) and timesteps (N,) with N ≥ 1, got {tuple(s.shape)} and {tuple(t.shape)}"
            )
        if s.device.type != "cpu":
            raise ValueError(f"sigmas must stay on the CPU (solver coefficients are host scalars), got {s.device}")
        if not s.is_floating_point() or not bool(torch.isfinite(s).all()):
            raise ValueError(f"sigmas must be finite floats, got {s.tolist()}")
        if not bool((s[1:] < s[:-1]).all()) or s[0].item() > 1 or s[-1].item() < 0:
            raise ValueError(f"sigmas must decrease strictly within [0, 1], got {s.tolist()}")

    def __len__(self) -> int:
        return self.timesteps.numel()

    def sigma(self, i: int) -> float:
        """σ_i as a Python float (exactly the stored value)."""
        return float(self.sigmas[i])


def shift_sigmas(sigmas: np.ndarray, shift: float) -> np.ndarray:
    """Timestep shift σ' = sσ / (1 + (s − 1)σ): s > 1 spends more of the steps at high noise."""
    if not 0 < shift < math.inf:
        raise ValueError(f"shift={shift!r} must be a finite number > 0")
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def flow_schedule(
    steps: int, shift: float = 5.0, num_train_timesteps: int = 1000, dtype: torch.dtype = torch.float32
) -> Schedule:
    """The grid of diffusers' ``UniPCMultistepScheduler(use_flow_sigmas=True, final_sigmas_type="zero")``.

    σ = shift(linspace(1, 1/T, N + 1)[:-1]) in float64, the first σ moved off 1 by ``FIRST_SIGMA_OFFSET``;
    timesteps = σ·T truncated to int64; sigmas stored in ``dtype`` with a final 0 appended. float32 is the
    reference's grid (and the UniPC coefficients are then computed in float32, as diffusers does); float64
    keeps the unrounded grid and float64 coefficients.
    """
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype={dtype} must be torch.float32 or torch.float64")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r} must be an int ≥ 1")
    if isinstance(num_train_timesteps, bool) or not isinstance(num_train_timesteps, int) or num_train_timesteps < 1:
        raise ValueError(f"num_train_timesteps={num_train_timesteps!r} must be an int ≥ 1")
    base = np.linspace(1.0, 1.0 / num_train_timesteps, steps + 1)[:-1]  # (N,) float64
    sigmas = shift_sigmas(base, shift)
    if abs(sigmas[0] - 1.0) < FIRST_SIGMA_OFFSET:
        sigmas[0] -= FIRST_SIGMA_OFFSET
    timesteps = torch.from_numpy(sigmas * num_train_timesteps).to(torch.int64)  # (N,) truncation toward 0
    return Schedule(sigmas=torch.from_numpy(np.append(sigmas, 0.0)).to(dtype), timesteps=timesteps)  # (N+1,), (N,)


__all__ = ["FIRST_SIGMA_OFFSET", "Schedule", "flow_schedule", "shift_sigmas"]
