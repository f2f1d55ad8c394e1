"""Behaviour of chronoedit.sampling beyond parity: validation before any model call, the reasoning-frame drop for
every solver, immutability of inputs, guidance closures, and the Hydra ``sampler/`` group."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from chronoedit.sampling import (
    DPMPP2M,
    SOLVER_ORDERS,
    SOLVERS,
    Euler,
    FrameDrop,
    Heun,
    SamplerConfig,
    Schedule,
    SolverState,
    UniPC,
    build_solver,
    classifier_free_guidance,
    classifier_free_guidance_batched,
    flow_schedule,
    sample,
    select_frames,
    shift_sigmas,
    unipc_step,
)

B, C, F, H, W = 2, 16, 8, 2, 3
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "sampler"
ALL_SOLVERS = {
    "unipc_1": UniPC(order=1),
    "unipc_2": UniPC(order=2),
    "unipc_3": UniPC(order=3),
    "unipc_2_bh1": UniPC(order=2, solver_type="bh1"),
    "euler": Euler(),
    "heun": Heun(),
    "dpmpp_1": DPMPP2M(order=1),
    "dpmpp_2m": DPMPP2M(order=2),
}
MULTISTEP = [n for n in ALL_SOLVERS if n.startswith(("unipc", "dpmpp_2m"))]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def separable_field(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Nonlinear in x, depends on t, mixes channels, but acts on each frame alone (bitwise: no reductions)."""
    s = t.to(x.dtype).view(-1, 1, 1, 1, 1) / 1000
    return torch.tanh(x.roll(1, dims=1)) * (1 + s) + 0.5 * x * s + torch.cos(2 * s + x)


def noise(frames: int = F, seed: int = 1) -> torch.Tensor:
    x = torch.randn(B, C, frames, H, W, generator=torch.Generator().manual_seed(seed))
    return x + torch.linspace(-1, 1, frames).view(1, 1, frames, 1, 1)


def never_called(x, t):
    raise AssertionError("the model must not be called")


# ---------------------------------------------------------------- validation, before the first model call


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"steps": 0}, "steps=0"),
        ({"steps": -3}, "steps=-3"),
        ({"steps": 2.5}, "steps=2.5"),
        ({"shift": 0.0}, "shift=0.0"),
        ({"shift": -1.0}, "shift=-1.0"),
        ({"shift": float("inf")}, "shift=inf"),
        ({"shift": float("nan")}, "shift=nan"),
        ({"name": "ddim"}, "name='ddim'"),
        ({"name": "unipc", "order": 4}, "order=4"),
        ({"name": "unipc", "order": 0}, "order=0"),
        ({"name": "euler", "order": 2}, "order=2"),
        ({"name": "heun", "order": 1}, "order=1"),
        ({"name": "dpmpp_2m", "order": 3}, "order=3"),
        ({"solver_type": "bh3"}, "solver_type='bh3'"),
        ({"num_train_timesteps": 0}, "num_train_timesteps=0"),
    ],
)
def test_sampler_config_rejects_invalid_values(kwargs, needle):
    with pytest.raises(ValueError, match=re.escape(needle)):
        SamplerConfig(**kwargs)


def test_schedule_and_solver_constructors_reject_invalid_values():
    for bad in ({"steps": 0}, {"steps": 4, "shift": 0.0}, {"steps": 4, "shift": -2.0}):
        with pytest.raises(ValueError, match=r"steps=0|shift="):
            flow_schedule(**bad)
    with pytest.raises(ValueError, match="order=4"):
        UniPC(order=4)
    with pytest.raises(ValueError, match="solver_type='bh9'"):
        UniPC(solver_type="bh9")
    with pytest.raises(ValueError, match="order=3"):
        DPMPP2M(order=3)
    with pytest.raises(ValueError, match="step=-1"):
        FrameDrop(step=-1)
    with pytest.raises(ValueError, match="strictly"):
        Schedule(sigmas=torch.tensor([1.0, 0.5, 0.5, 0.0]), timesteps=torch.tensor([999, 500, 500]))
    with pytest.raises(ValueError, match=r"\(N\+1,\)"):
        Schedule(sigmas=torch.tensor([0.9, 0.0]), timesteps=torch.tensor([900, 0]))


def test_invalid_settings_raise_before_the_first_model_call():
    sched = flow_schedule(4, 5.0)
    with pytest.raises(ValueError, match=r"\[8\]"):  # one past the end of 8 frames
        sample(never_called, noise(), sched, UniPC(), drop=FrameDrop(step=2, keep=(0, 8)))
    with pytest.raises(ValueError, match=r"\[-9\]"):
        sample(never_called, noise(), sched, Euler(), drop=FrameDrop(step=0, keep=(-9, -1)))
    with pytest.raises(ValueError, match="order=4"):
        unipc_step(never_called, noise(), sched, 0, SolverState(), order=4)
    with pytest.raises(ValueError, match="i=4"):
        Euler().step(never_called, noise(), sched, 4, SolverState())
    with pytest.raises(ValueError, match=r"σ_0=1\.0"):  # UniPC's log(1 − σ) at σ = 1
        one = Schedule(sigmas=torch.tensor([1.0, 0.5, 0.0]), timesteps=torch.tensor([1000, 500]))
        sample(never_called, noise(), one, UniPC())
    with pytest.raises(ValueError, match=r"\(B, C, F, H, W\)"):
        sample(never_called, torch.zeros(2, 16, 4, 4), sched, Heun())


def test_heun_needs_a_schedule_ending_at_zero():
    sched = Schedule(sigmas=torch.tensor([0.9, 0.5, 0.1]), timesteps=torch.tensor([900.0, 500.0]))
    with pytest.raises(ValueError, match=r"σ=0\.1"):
        sample(never_called, noise(), sched, Heun())


def test_select_frames_validates_indices_and_allows_negatives():
    solver, sched = UniPC(order=3), flow_schedule(4, 5.0)
    x, state = noise(), solver.init_state()
    for i in range(2):
        x, state = solver.step(separable_field, x, sched, i, state)
    assert len(state.x0_preds) == 2 and state.last_sample is not None and state.num_frames == F
    neg, pos = state.select_frames([0, -1]), state.select_frames([0, F - 1])
    for a, b in zip((*neg.x0_preds, neg.last_sample), (*pos.x0_preds, pos.last_sample)):
        assert a.shape == (B, C, 2, H, W) and torch.equal(a, b)
    assert torch.equal(neg.last_sample, state.last_sample[:, :, [0, -1]])
    assert torch.equal(state.select_frames([np.int64(0), np.int64(-1)]).last_sample, neg.last_sample)
    for bad in ([0, F], [-F - 1], [], [0, 0], [1, -(F - 1)], [True], ["0"], [0.0]):
        with pytest.raises(ValueError):
            state.select_frames(bad)
    with pytest.raises(ValueError, match=r"\[8\]"):
        select_frames(x, state, [0, 8])
    assert solver.init_state().select_frames([0, -1]).num_frames is None  # nothing to slice yet


def test_forgetting_to_drop_the_state_is_an_error():
    solver, sched = DPMPP2M(), flow_schedule(4, 5.0)
    x, state = solver.step(separable_field, noise(), sched, 0, solver.init_state())
    with pytest.raises(ValueError, match="8 frames but the sample has 2"):
        solver.step(never_called, x[:, :, [0, -1]], sched, 1, state)


def test_build_solver_and_registry():
    assert set(SOLVERS) == set(SOLVER_ORDERS) == {"unipc", "euler", "dpmpp_2m", "heun"}
    assert build_solver(SamplerConfig()) == UniPC(order=2, solver_type="bh2", lower_order_final=True)
    assert build_solver(SamplerConfig(name="unipc", order=3, lower_order_final=False)) == UniPC(3, "bh2", False)
    assert build_solver(SamplerConfig(name="euler", order=1)) == Euler()
    assert build_solver(SamplerConfig(name="heun", order=2)) == Heun()
    assert build_solver(SamplerConfig(name="dpmpp_2m", order=1)) == DPMPP2M(order=1)


@pytest.mark.parametrize("name", list(ALL_SOLVERS))
def test_model_calls_per_step(name):
    solver, sched, calls = ALL_SOLVERS[name], flow_schedule(5, 5.0), []

    def model(x, t):
        calls.append(t)
        return separable_field(x, t)

    sample(model, noise(), sched, solver)
    expected = solver.model_calls_per_step * 5 - (1 if name == "heun" else 0)  # Heun's last step is Euler
    assert len(calls) == expected
    assert all(t.dtype == torch.int64 and t.shape == (B,) for t in calls)
    assert {int(t[0]) for t in calls} == set(sched.timesteps.tolist())


# ---------------------------------------------------------------- the reasoning drop, for every solver


@pytest.mark.parametrize("name", list(ALL_SOLVERS))
@pytest.mark.parametrize("steps", [1, 4, 9])
def test_frame_drop_keeps_frames_consistent(name, steps):
    """With a field that acts on each frame alone, dropping frames at any step k must give exactly the frames
    [0, -1] of the run without a drop: the sample and every piece of history were sliced alike."""
    solver, sched = ALL_SOLVERS[name], flow_schedule(steps, 5.0)
    full = sample(separable_field, noise(), sched, solver)[:, :, [0, -1]]
    assert torch.isfinite(full).all()
    for k in sorted({k for k in (0, 1, steps // 2, steps - 1) if k < steps}):
        dropped = sample(separable_field, noise(), sched, solver, drop=FrameDrop(step=k))
        assert dropped.shape == (B, C, 2, H, W)
        assert torch.equal(dropped, full), (name, steps, k)
    never = sample(separable_field, noise(), sched, solver, drop=FrameDrop(step=steps))
    assert torch.equal(never[:, :, [0, -1]], full) and never.shape[2] == F


@pytest.mark.parametrize("name", MULTISTEP)
def test_frame_drop_check_can_fail(name):
    """Control for the test above: a history sliced to the wrong frames shows."""
    solver, sched = ALL_SOLVERS[name], flow_schedule(6, 5.0)
    full = sample(separable_field, noise(), sched, solver)[:, :, [0, -1]]

    def wrong_drop(i, x, state):
        if i != 3:
            return x, state
        return x[:, :, [0, -1]], state.select_frames([0, 1])

    wrong = sample(separable_field, noise(), sched, solver, before_step=wrong_drop)
    assert not torch.allclose(wrong, full, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("name", list(ALL_SOLVERS))
def test_solvers_do_not_mutate_their_inputs(name):
    solver, sched = ALL_SOLVERS[name], flow_schedule(5, 5.0)
    x, state = noise(), solver.init_state()
    for i in range(len(sched)):
        if i == 2:
            x, state = select_frames(x, state, [0, -1])
        x_in = x.clone()
        kept = [t.clone() for t in state.x0_preds] + (
            [state.last_sample.clone()] if state.last_sample is not None else []
        )
        x_out, new_state = solver.step(separable_field, x, sched, i, state)
        assert torch.equal(x, x_in) and x_out is not x and new_state is not state
        now = [*state.x0_preds] + ([state.last_sample] if state.last_sample is not None else [])
        assert all(torch.equal(a, b) for a, b in zip(now, kept))
        x, state = x_out, new_state


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("name", list(ALL_SOLVERS))
def test_sampling_on_gpu_matches_cpu(name):
    """Sample on the GPU, schedule on the host: same numbers as on the CPU up to kernel rounding."""
    solver, sched, drop = ALL_SOLVERS[name], flow_schedule(8, 5.0), FrameDrop(step=3)
    cpu = sample(separable_field, noise(), sched, solver, drop=drop)
    gpu = sample(separable_field, noise().cuda(), sched, solver, drop=drop)
    assert gpu.device.type == "cuda"
    assert ((gpu.cpu() - cpu).norm() / cpu.norm()).item() < 1e-5


def test_schedule_starting_at_one_is_fine_for_non_exponential_solvers():
    sched = Schedule(sigmas=torch.tensor([1.0, 0.6, 0.3, 0.0]), timesteps=torch.tensor([1000, 600, 300]))
    for solver in (Euler(), Heun(), DPMPP2M()):
        assert torch.isfinite(sample(separable_field, noise(), sched, solver)).all()


def test_shift_sigmas():
    s = torch.linspace(0, 1, 11, dtype=torch.float64).numpy()
    assert (shift_sigmas(s, 1.0) == s).all()
    shifted = shift_sigmas(s, 5.0)
    assert shifted[0] == 0 and shifted[-1] == 1 and (shifted[1:] > shifted[:-1]).all()
    assert abs(shifted[5] - 5 / 6) < 1e-15  # sσ/(1+(s−1)σ) at σ = ½
    assert (shifted >= s).all()  # s > 1 moves steps towards noise


# ---------------------------------------------------------------- guidance


class Counting:
    def __init__(self, offset: float) -> None:
        self.offset, self.calls = offset, 0

    def __call__(self, x, t):
        self.calls += 1
        return separable_field(x, t) + self.offset


def test_cfg_two_calls_and_scale_one():
    cond, uncond = Counting(0.5), Counting(-0.25)
    x, t = noise(), torch.full((B,), 700)
    guided = classifier_free_guidance(cond, uncond, 4.0)(x, t)
    assert cond.calls == uncond.calls == 1
    c, u = separable_field(x, t) + 0.5, separable_field(x, t) - 0.25
    assert torch.equal(guided, u + 4.0 * (c - u))
    assert classifier_free_guidance(cond, uncond, 1.0) is cond  # scale ≤ 1: conditional pass only (the reference)
    assert classifier_free_guidance(cond, uncond, 0.5) is cond
    with pytest.raises(ValueError, match="scale=nan"):
        classifier_free_guidance(cond, uncond, float("nan"))


def batch_model(x, t, context, bias, mode="add"):
    """Batch-invariant toy model with a per-sample context (B, L, D) and a shared non-tensor option."""
    assert mode == "add"
    return separable_field(x, t) + context.mean(dim=(1, 2)).view(-1, 1, 1, 1, 1) * bias.view(-1, 1, 1, 1, 1)


@pytest.mark.parametrize("scale", [0.5, 1.0, 3.5])
def test_cfg_batched_equals_two_calls(scale):
    g = torch.Generator().manual_seed(3)
    cond_kw = {"context": torch.randn(B, 5, 7, generator=g), "bias": torch.randn(B, generator=g), "mode": "add"}
    uncond_kw = {"context": torch.randn(B, 5, 7, generator=g), "bias": torch.randn(B, generator=g), "mode": "add"}
    calls = []

    def model_fn(x, t, **kw):
        calls.append(x.shape[0])
        return batch_model(x, t, **kw)

    x, t = noise(), torch.full((B,), 480)
    batched = classifier_free_guidance_batched(model_fn, cond_kw, uncond_kw, scale)(x, t)
    assert calls == ([2 * B] if scale > 1.0 else [B])
    two = classifier_free_guidance(
        lambda x, t: batch_model(x, t, **cond_kw), lambda x, t: batch_model(x, t, **uncond_kw), scale
    )(x, t)
    assert torch.equal(batched, two)
    swapped = classifier_free_guidance_batched(model_fn, uncond_kw, cond_kw, scale)(x, t)
    assert scale <= 1.0 or not torch.allclose(swapped, two)  # cond really is the first half


def test_cfg_batched_rejects_mismatched_kwargs():
    c = {"context": torch.zeros(B, 4, 3), "mode": "add"}
    with pytest.raises(ValueError, match="keys"):
        classifier_free_guidance_batched(batch_model, c, {"context": torch.zeros(B, 4, 3)}, 2.0)
    with pytest.raises(ValueError, match="shape"):
        classifier_free_guidance_batched(batch_model, c, {"context": torch.zeros(B, 5, 3), "mode": "add"}, 2.0)
    with pytest.raises(ValueError, match="'mode'"):
        classifier_free_guidance_batched(batch_model, c, {"context": torch.zeros(B, 4, 3), "mode": "mul"}, 2.0)


# ---------------------------------------------------------------- Hydra sampler/ group


def test_sampler_yaml_files_state_only_what_differs_from_the_dataclass():
    fields = {f.name for f in dataclasses.fields(SamplerConfig)}
    defaults = SamplerConfig()
    files = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    assert files == ["dpmpp_2m", "euler", "heun", "toy", "unipc", "unipc_distill"]
    for stem in files:
        raw = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / f"{stem}.yaml"))
        assert set(raw) <= fields, stem
        assert all(getattr(defaults, k) != v for k, v in raw.items()), f"{stem} repeats a default"
    schema = OmegaConf.structured(SamplerConfig)
    with pytest.raises(Exception, match="stepz"):  # a typo in an override is an error
        OmegaConf.merge(schema, {"stepz": 3})


@pytest.mark.parametrize("stem", ["unipc", "unipc_distill", "euler", "heun", "dpmpp_2m", "toy"])
def test_sampler_configs_compose_and_run_one_step(stem):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = compose(config_name=stem)
    merged = OmegaConf.merge(OmegaConf.structured(SamplerConfig), cfg)
    config = OmegaConf.to_object(merged)
    assert isinstance(config, SamplerConfig) and config == SamplerConfig(**OmegaConf.to_container(cfg))
    if stem == "unipc":
        assert config == SamplerConfig()  # 50 steps, shift 5.0, order 2, bh2
    if stem == "unipc_distill":
        assert (config.name, config.steps, config.shift, config.order) == ("unipc", 8, 2.0, 2)
    solver = build_solver(config)
    assert solver.name == config.name
    sched = flow_schedule(config.steps, config.shift, config.num_train_timesteps)
    x, state = solver.step(separable_field, noise(), sched, 0, solver.init_state())
    assert x.shape == (B, C, F, H, W) and torch.isfinite(x).all() and state.num_frames == F
