"""The flow-matching objective: the interpolation and target, σ distributions with the shift, weights, the loss
mask, the condition, and per-sample draws that depend on (seed, step, slot) only."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from chronoedit.pipeline.condition import build_condition
from chronoedit.sampling import SolverState, euler_step, flow_schedule
from chronoedit.training.config import TimestepConfig
from chronoedit.training.objective import (
    bell_weight,
    draw_sample,
    flow_loss,
    model_input,
    noisy_latents,
    shift_sigma,
    stream_seed,
)

SHAPE = (16, 2, 4, 6)


def test_interpolation_and_target_follow_the_sampler_convention():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, *SHAPE, generator=g), torch.randn(3, *SHAPE, generator=g)
    sigma = torch.tensor([0.0, 0.3, 1.0])
    x_t, target = noisy_latents(x0, eps, sigma)
    assert torch.equal(x_t[0], x0[0]) and torch.equal(x_t[2], eps[2])
    assert torch.allclose(x_t[1], 0.7 * x0[1] + 0.3 * eps[1])
    assert torch.equal(target, eps - x0)
    # the target is the velocity the samplers integrate: an Euler step of the sampler with it, from x_σ, lands on
    # the same interpolation at the next σ (exactly linear paths)
    x0, eps = x0[:1], eps[:1]
    sched = flow_schedule(4, shift=1.0)
    x_s, v = noisy_latents(x0, eps, torch.tensor([sched.sigma(1)]))
    x_next, _ = euler_step(lambda x, t: v, x_s, sched, 1, SolverState(num_frames=2))
    want = noisy_latents(x0, eps, torch.tensor([sched.sigma(2)]))[0]
    assert torch.allclose(x_next, want, atol=1e-5)


@pytest.mark.parametrize("distribution", ["uniform", "logit_normal", "discrete"])
def test_sigma_distributions_with_the_shift(distribution):
    cfg = TimestepConfig(distribution=distribution, shift=5.0, logit_mean=0.5, logit_std=1.0)
    draws = [draw_sample(cfg, (1,), 0.0, seed=3, step=s, slot=0) for s in range(4000)]
    sigmas = np.array([d.sigma for d in draws])
    assert sigmas.min() >= 0 and sigmas.max() <= 1
    assert all(abs(d.timestep - 1000 * d.sigma) < 1e-9 for d in draws[:50])
    # the shift maps quantiles: median σ = shift(median of the base distribution)
    base_median = {"uniform": 0.5, "logit_normal": 1 / (1 + math.exp(-0.5)), "discrete": 0.5}[distribution]
    assert abs(np.median(sigmas) - shift_sigma(base_median, 5.0)) < 0.02
    if distribution == "discrete":  # every σ is a point of DiffSynth's shifted 1000-step grid
        grid = {round(shift_sigma(1 - k / 1000, 5.0), 12) for k in range(1000)}
        assert all(round(s, 12) in grid for s in sigmas[:200])


def test_bell_weight_has_mean_one_over_the_grid_and_peaks_mid_way():
    cfg = TimestepConfig(distribution="discrete", weighting="bell")
    grid = [1000 * shift_sigma(1 - k / 1000, cfg.shift) for k in range(1000)]
    w = np.array([bell_weight(t, cfg) for t in grid])
    assert abs(w.mean() - 1) < 1e-9 and w.min() >= 0
    assert bell_weight(500.0, cfg) > bell_weight(900.0, cfg) > bell_weight(999.0, cfg)


def test_draws_depend_on_seed_step_and_slot_only():
    cfg = TimestepConfig()
    a = draw_sample(cfg, SHAPE, 0.5, seed=1, step=7, slot=3)
    b = draw_sample(cfg, SHAPE, 0.5, seed=1, step=7, slot=3)  # asked again, later, from anywhere: the same
    assert a.sigma == b.sigma and torch.equal(a.noise, b.noise) and a.drop_text == b.drop_text
    others = [draw_sample(cfg, SHAPE, 0.5, seed=s, step=t, slot=k) for s, t, k in [(2, 7, 3), (1, 8, 3), (1, 7, 4)]]
    assert all(o.sigma != a.sigma and not torch.equal(o.noise, a.noise) for o in others)
    assert stream_seed(1, 2) != stream_seed(2, 1)
    drops = [draw_sample(cfg, (1,), 0.25, seed=0, step=s, slot=0).drop_text for s in range(2000)]
    assert abs(np.mean(drops) - 0.25) < 0.03


def test_loss_is_the_mse_and_can_leave_out_the_input_frame():
    g = torch.Generator().manual_seed(1)
    pred, target = torch.randn(2, *SHAPE, generator=g), torch.randn(2, *SHAPE, generator=g)
    w = torch.tensor([1.0, 2.0])
    per = flow_loss(pred, target, w)
    assert torch.allclose(per, ((pred - target) ** 2).mean(dim=(1, 2, 3, 4)) * w)
    assert flow_loss(target, target, w).abs().max() == 0
    moved = pred.clone()
    moved[:, :, 0] += 10.0  # only the input frame changes
    assert torch.equal(flow_loss(moved, target, w, False), flow_loss(pred, target, w, False))
    assert (flow_loss(moved, target, w, True) > per).all()


def test_model_input_is_noise_then_the_inference_condition():
    g = torch.Generator().manual_seed(2)
    for frames in (2, 8):
        x_t, cond = torch.randn(2, 16, frames, 4, 6, generator=g), torch.randn(2, 16, frames, 4, 6, generator=g)
        inp = model_input(x_t, cond)
        assert inp.shape == (2, 36, frames, 4, 6)
        assert torch.equal(inp[:, :16], x_t)
        assert torch.equal(inp[:, 16:], build_condition(cond, 4 * (frames - 1) + 1))
        assert inp[:, 16:20, 0].min() == 1 and inp[:, 16:20, 1:].abs().max() == 0  # the first-frame mask


def test_timestep_config_rejects_bad_values():
    with pytest.raises(ValueError, match="distribution"):
        TimestepConfig(distribution="beta")
    with pytest.raises(ValueError, match="shift"):
        TimestepConfig(shift=0.0)
