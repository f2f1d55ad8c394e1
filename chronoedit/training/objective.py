"""The ChronoEdit training objective: rectified flow on latent videos, as pure functions.

x_σ = (1 − σ)·x₀ + σ·ε, the DiT predicts the velocity v = ε − x₀ at timestep t = 1000·σ, and the loss is the MSE
between its output and ε − x₀. σ is drawn from a base distribution on [0, 1] and then shifted
(σ = sσ_b / (1 + (s − 1)σ_b)), as the sampling schedule is.

Every random draw of a sample (σ, ε, text dropout) comes from its own generator seeded by (seed, step, slot),
where the slot is the sample's position in the *global* batch: the draws do not depend on how many processes
run or which process holds the sample, so 1 and N processes train on identical numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from chronoedit.pipeline.condition import build_condition
from chronoedit.sampling.schedule import shift_sigmas
from chronoedit.training.config import TimestepConfig

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def stream_seed(*keys: int) -> int:
    """A 63-bit seed that is a hash of the integer keys (e.g. seed, domain, step, slot); never of the rank."""
    h = 0
    for k in keys:
        h = _splitmix64(h ^ (int(k) & _MASK64))
    return h & ((1 << 63) - 1)


def generator(*keys: int) -> torch.Generator:
    """A CPU generator seeded by :func:`stream_seed` (draws are made on the CPU, then moved)."""
    return torch.Generator("cpu").manual_seed(stream_seed(*keys))


# Domains keep the streams of different purposes apart.
DOMAIN_SAMPLE, DOMAIN_KIND, DOMAIN_ORDER = 1, 2, 3


def draw_base_sigma(cfg: TimestepConfig, gen: torch.Generator) -> float:
    """σ_base in [0, 1] from the configured distribution (one draw)."""
    if cfg.distribution == "uniform":
        return float(torch.rand((), generator=gen, dtype=torch.float64))
    if cfg.distribution == "logit_normal":
        z = float(torch.randn((), generator=gen, dtype=torch.float64)) * cfg.logit_std + cfg.logit_mean
        return 1.0 / (1.0 + math.exp(-z))
    n = cfg.num_train_timesteps  # discrete: grid point k of linspace(1, 0, n + 1)[:-1]
    k = int(torch.randint(n, (), generator=gen))
    return 1.0 - k / n


def shift_sigma(base: float, shift: float) -> float:
    return float(shift_sigmas(np.float64(base), shift))


def bell_weight(timestep: float, cfg: TimestepConfig) -> float:
    """DiffSynth's timestep weight: y(t) = exp(−2((t − T/2)/T)²) minus its minimum over the training grid, scaled
    so that its mean over the grid is 1."""
    n = cfg.num_train_timesteps
    grid = shift_sigmas(np.linspace(1.0, 0.0, n + 1)[:-1], cfg.shift) * n  # (n,) training timesteps
    y = np.exp(-2 * ((grid - n / 2) / n) ** 2)
    y_t = math.exp(-2 * ((timestep - n / 2) / n) ** 2)
    return float((y_t - y.min()) * n / (y - y.min()).sum())


@dataclass(frozen=True)
class SampleDraw:
    """The random choices of one training sample."""

    sigma: float  # shifted σ in [0, 1]
    timestep: float  # num_train_timesteps · σ
    weight: float  # loss weight (1 unless weighting = bell)
    noise: Tensor  # ε, (16, T, h, w) float32 on the CPU
    drop_text: bool  # train on the empty prompt


def draw_sample(
    cfg: TimestepConfig, latent_shape: tuple[int, ...], text_dropout: float, seed: int, step: int, slot: int
) -> SampleDraw:
    """The draws of global-batch slot ``slot`` at ``step``: σ, then ε, then the text-dropout coin."""
    gen = generator(seed, DOMAIN_SAMPLE, step, slot)
    sigma = shift_sigma(draw_base_sigma(cfg, gen), cfg.shift)
    noise = torch.randn(latent_shape, generator=gen, dtype=torch.float32)
    drop = bool(torch.rand((), generator=gen) < text_dropout) if text_dropout > 0 else False
    t = sigma * cfg.num_train_timesteps
    weight = bell_weight(t, cfg) if cfg.weighting == "bell" else 1.0
    return SampleDraw(sigma, t, weight, noise, drop)


def noisy_latents(x0: Tensor, noise: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
    """x0, ε (B, C, T, h, w), σ (B,) -> x_σ = (1 − σ)x₀ + σε and the velocity target ε − x₀, both float32."""
    s = sigma.float().view(-1, 1, 1, 1, 1)
    x0, noise = x0.float(), noise.float()
    return (1 - s) * x0 + s * noise, noise - x0


def model_input(x_t: Tensor, cond_latents: Tensor) -> Tensor:
    """Noisy latents (B, 16, T, h, w) ++ the condition built as at inference (B, 20, T, h, w) -> (B, 36, T, h, w).

    ``cond_latents`` are the normalised VAE latents of [input image, zeros × (F − 1)], F = 4(T − 1) + 1.
    """
    num_frames = 4 * (x_t.shape[2] - 1) + 1
    return torch.cat([x_t, build_condition(cond_latents.to(x_t.dtype), num_frames)], dim=1)


def flow_loss(pred: Tensor, target: Tensor, weight: Tensor, loss_on_input_frame: bool = True) -> Tensor:
    """Per-sample loss (B,): weight · mean((pred − target)²) over channels, frames and pixels (fp32).

    With ``loss_on_input_frame=False`` latent frame 0 (the input image) is left out of the mean.
    """
    err = (pred.float() - target.float()) ** 2  # (B, C, T, h, w)
    if not loss_on_input_frame:
        err = err[:, :, 1:]
    return err.mean(dim=(1, 2, 3, 4)) * weight.float()


__all__ = [
    "SampleDraw",
    "bell_weight",
    "draw_base_sigma",
    "draw_sample",
    "flow_loss",
    "generator",
    "model_input",
    "noisy_latents",
    "shift_sigma",
    "stream_seed",
]
