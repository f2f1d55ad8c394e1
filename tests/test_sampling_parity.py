"""Parity of chronoedit.sampling with diffusers' schedulers, driven the way ChronoEditPipeline drives them.

The velocity field is synthetic but shaped like ChronoEdit latents (B, 16, F=8, h, w): nonlinear in x, depends
on t, mixes channels, and couples frames through their mean, so that any wrong slice of the sample or of the
solver history after the reasoning drop (F = 8 → 2) changes the numbers.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

from chronoedit.sampling import (
    DPMPP2M,
    Euler,
    FrameDrop,
    Schedule,
    UniPC,
    classifier_free_guidance,
    flow_schedule,
    sample,
    select_frames,
)
from tests.helpers import rel_err

B, C, F, H, W = 2, 16, 8, 2, 3
KEEP = [0, -1]
TOL = 1e-6  # the brief's bound; measured: 0 (bit-identical) for UniPC and Euler, ≤ 3e-7 for DPM++(2M)
STEPS = (1, 2, 4, 8, 50)
SHIFTS = (1.0, 2.0, 5.0)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


class Field:
    """v(x, t) = tanh(x)·A·(1+s) + x·(½+s²) + cos(3s + φ_cf) + ½·tanh(mean_F x), s = t/1000; records calls."""

    def __init__(self, seed: int = 0, offset: float = 0.0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.mix = torch.randn(C, C, generator=g) / C**0.5
        self.phase = torch.randn(1, C, 1, 1, 1, generator=g) + offset  # per channel: frames stay interchangeable
        self.calls: list[torch.Tensor] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls.append(t.clone())
        s = t.to(torch.float32).view(-1, 1, 1, 1, 1) / 1000  # (B, 1, 1, 1, 1)
        mixed = torch.einsum("dc,bcfhw->bdfhw", self.mix, torch.tanh(x))
        coupling = 0.5 * torch.tanh(x.mean(dim=2, keepdim=True))  # (B, C, 1, H, W): all frames see each other
        return mixed * (1 + s) + x * (0.5 + s * s) + torch.cos(3 * s + self.phase) + coupling


def noise(seed: int = 1) -> torch.Tensor:
    x = torch.randn(B, C, F, H, W, generator=torch.Generator().manual_seed(seed))
    return x + torch.linspace(-1, 1, F).view(1, 1, F, 1, 1)  # frames differ


def unipc_ref(steps: int, shift: float, order: int) -> UniPCMultistepScheduler:
    sched = UniPCMultistepScheduler(
        num_train_timesteps=1000,
        solver_order=order,
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        flow_shift=shift,
        predict_x0=True,
        solver_type="bh2",
        lower_order_final=True,
        final_sigmas_type="zero",
    )
    sched.set_timesteps(steps)
    return sched


def reference_loop(sched, model, x: torch.Tensor, drop_at: int) -> list[torch.Tensor]:
    """ChronoEditPipeline's denoising loop (scheduler part), reasoning drop included; returns every x_{i+1}."""
    out = []
    for i, t in enumerate(sched.timesteps):
        if i == drop_at:
            x = x[:, :, KEEP]
            for j in range(len(sched.model_outputs)):
                if sched.model_outputs[j] is not None and x.shape[-3] != sched.model_outputs[j].shape[-3]:
                    sched.model_outputs[j] = sched.model_outputs[j][:, :, KEEP]
            if getattr(sched, "last_sample", None) is not None:
                sched.last_sample = sched.last_sample[:, :, KEEP]
        x = sched.step(model(x, t.expand(x.shape[0])), t, x, return_dict=False)[0]
        out.append(x)
    return out


def our_loop(solver, sched: Schedule, model, x: torch.Tensor, drop_at: int) -> list[torch.Tensor]:
    """The loop the pipeline writes with our API."""
    out, state = [], solver.init_state()
    for i in range(len(sched)):
        if i == drop_at:
            x, state = select_frames(x, state, KEEP)
        x, state = solver.step(model, x, sched, i, state)
        out.append(x)
    return out


def drop_steps(steps: int) -> list[int]:
    return sorted({0, 1, steps // 2, steps})  # steps = never (the released scripts' default)


def max_traj_err(ours: list[torch.Tensor], ref: list[torch.Tensor]) -> float:
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref):
        assert a.shape == b.shape and a.dtype == b.dtype
    return max(rel_err(a, b) for a, b in zip(ours, ref))


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("shift", [*SHIFTS, 0.5, 3.7])
def test_flow_schedule_matches_diffusers(steps, shift):
    ref = unipc_ref(steps, shift, order=2)
    ours = flow_schedule(steps, shift)
    assert ours.timesteps.dtype == ref.timesteps.dtype == torch.int64
    assert torch.equal(ours.timesteps, ref.timesteps)
    assert ours.sigmas.dtype == ref.sigmas.dtype == torch.float32
    assert torch.equal(ours.sigmas, ref.sigmas)
    assert ours.sigmas[-1].item() == 0.0 and len(ours) == steps


@pytest.mark.parametrize("steps", [100, 250, 1000])
def test_flow_schedule_matches_diffusers_long(steps):
    ref, ours = unipc_ref(steps, 5.0, order=2), flow_schedule(steps, 5.0)
    assert torch.equal(ours.timesteps, ref.timesteps) and torch.equal(ours.sigmas, ref.sigmas)


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("steps", STEPS)
def test_unipc_matches_diffusers_with_reasoning_drop(order, steps):
    worst = 0.0
    for shift in SHIFTS:
        for k in drop_steps(steps):
            model_ref, model_ours = Field(), Field()
            ref = reference_loop(unipc_ref(steps, shift, order), model_ref, noise(), k)
            ours = our_loop(UniPC(order=order), flow_schedule(steps, shift), model_ours, noise(), k)
            # identical timesteps reach the model, int64, one call per step, batch-broadcast
            assert len(model_ours.calls) == len(model_ref.calls) == steps
            for a, b in zip(model_ours.calls, model_ref.calls):
                assert a.dtype == b.dtype == torch.int64 and a.shape == (B,) and torch.equal(a, b)
            expect_frames = 2 if k < steps else F
            assert ours[-1].shape == (B, C, expect_frames, H, W)
            worst = max(worst, max_traj_err(ours, ref))
    print(f"unipc order={order} steps={steps}: max rel err {worst:.2e}")
    assert worst <= TOL


def test_unipc_drop_parity_detects_a_wrong_history_slice():
    """The parity above can fail: slicing the history with the wrong frames (or not dropping the last sample)
    moves the result far beyond the tolerance."""
    steps, k = 8, 4
    ref = reference_loop(unipc_ref(steps, 5.0, 2), Field(), noise(), k)[-1]
    solver, sched, model = UniPC(order=2), flow_schedule(steps, 5.0), Field()
    x, state = noise(), solver.init_state()
    for i in range(steps):
        if i == k:
            x, _ = select_frames(x, state, KEEP)
            state = state.select_frames([0, 1])  # wrong frames in the history
        x, state = solver.step(model, x, sched, i, state)
    assert rel_err(x, ref) > 1e-3


def test_unipc_sample_with_framedrop_matches_explicit_loop():
    ref = reference_loop(unipc_ref(8, 5.0, 2), Field(), noise(), 3)[-1]
    x = sample(Field(), noise(), flow_schedule(8, 5.0), UniPC(order=2), drop=FrameDrop(step=3))
    assert torch.equal(x, ref)


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("steps", STEPS)
def test_dpmpp_2m_matches_diffusers(order, steps):
    """DPM-Solver++(2M) against DPMSolverMultistepScheduler (dpmsolver++, midpoint, flow sigmas) on its own
    grid, reasoning drop included (its history is sliced the same way)."""
    worst = 0.0
    for shift in SHIFTS:
        for k in drop_steps(steps):

            def ref_sched(shift=shift):
                s = DPMSolverMultistepScheduler(
                    num_train_timesteps=1000,
                    solver_order=order,
                    algorithm_type="dpmsolver++",
                    solver_type="midpoint",
                    prediction_type="flow_prediction",
                    use_flow_sigmas=True,
                    flow_shift=shift,
                    final_sigmas_type="zero",
                    lower_order_final=True,
                )
                s.set_timesteps(steps)
                return s

            ref = reference_loop(ref_sched(), Field(), noise(), k)
            grid = ref_sched()
            sched = Schedule(sigmas=grid.sigmas.clone(), timesteps=grid.timesteps.clone())
            ours = our_loop(DPMPP2M(order=order), sched, Field(), noise(), k)
            worst = max(worst, max_traj_err(ours, ref))
    print(f"dpmpp_2m order={order} steps={steps}: max rel err {worst:.2e}")
    assert worst <= TOL


@pytest.mark.parametrize("steps", STEPS)
def test_euler_matches_diffusers_flow_match_euler(steps):
    worst = 0.0
    for shift in SHIFTS:
        sched = flow_schedule(steps, shift)
        ref = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
        ref.set_timesteps(sigmas=sched.sigmas[:-1].tolist())  # the same grid, no second shift
        assert torch.equal(ref.sigmas, sched.sigmas)
        x, out = noise(), []
        model = Field()
        for i, t in enumerate(ref.timesteps):
            x = ref.step(model(x, sched.timesteps[i].expand(B)), t, x, return_dict=False)[0]
            out.append(x)
        worst = max(worst, max_traj_err(our_loop(Euler(), sched, Field(), noise(), steps), out))
    print(f"euler steps={steps}: max rel err {worst:.2e}")
    assert worst <= TOL


@pytest.mark.parametrize("scale", [1.0, 5.0])
def test_guided_unipc_matches_pipeline_loop(scale):
    """CFG closure + UniPC + drop against the pipeline's loop: cond pass, uncond pass, then
    ``noise_uncond + guidance_scale * (noise_pred - noise_uncond)`` when guidance_scale > 1."""
    steps, k = 8, 2
    cond, uncond = Field(seed=0), Field(seed=0, offset=0.7)
    sched_ref = unipc_ref(steps, 5.0, 2)
    x, ref_out = noise(), []
    for i, t in enumerate(sched_ref.timesteps):
        if i == k:
            x = x[:, :, KEEP]
            sched_ref.model_outputs = [m if m is None else m[:, :, KEEP] for m in sched_ref.model_outputs]
            sched_ref.last_sample = sched_ref.last_sample[:, :, KEEP]
        tt = t.expand(B)
        noise_pred = cond(x, tt)
        if scale > 1.0:
            noise_uncond = uncond(x, tt)
            noise_pred = noise_uncond + scale * (noise_pred - noise_uncond)
        x = sched_ref.step(noise_pred, t, x, return_dict=False)[0]
        ref_out.append(x)
    guided = classifier_free_guidance(Field(seed=0), Field(seed=0, offset=0.7), scale)
    ours = our_loop(UniPC(order=2), flow_schedule(steps, 5.0), guided, noise(), k)
    assert max_traj_err(ours, ref_out) == 0.0


@pytest.mark.parametrize("order", [2, 3])
def test_unipc_without_lower_order_final(order):
    """``lower_order_final=False``: identical to diffusers on every step but the last; there diffusers' order-p
    update into σ = 0 divides by r_k = 0 (NaN at order 2, a singular solve at order 3) and ours is first order,
    i.e. returns the data prediction."""
    steps, k = 8, 4
    ref_sched = unipc_ref(steps, 5.0, order)
    ref_sched.register_to_config(lower_order_final=False)
    ref_model, x, ref = Field(), noise(), []
    for i, t in enumerate(ref_sched.timesteps[:-1]):
        if i == k:
            x = x[:, :, KEEP]
            ref_sched.model_outputs = [m if m is None else m[:, :, KEEP] for m in ref_sched.model_outputs]
            ref_sched.last_sample = ref_sched.last_sample[:, :, KEEP]
        x = ref_sched.step(ref_model(x, t.expand(B)), t, x, return_dict=False)[0]
        ref.append(x)
    ours = our_loop(UniPC(order=order, lower_order_final=False), flow_schedule(steps, 5.0), Field(), noise(), k)
    # order 3 away from the ends: diffusers solves its 2×2 system with torch.linalg.solve, whose last-bit rounding
    # depends on the LAPACK kernel the CPU gets (3.3e-8 on some machines); order 2 is closed-form in both
    assert max_traj_err(ours[:-1], ref) <= (0.0 if order == 2 else 1e-6)
    with pytest.raises(RuntimeError):  # diffusers' last step: singular solve, or NaN at order 2
        t = ref_sched.timesteps[-1]
        out = ref_sched.step(ref_model(x, t.expand(B)), t, x, return_dict=False)[0]
        if not torch.isfinite(out).all():
            raise RuntimeError("non-finite")
    assert torch.isfinite(ours[-1]).all()
    lof = our_loop(UniPC(order=order), flow_schedule(steps, 5.0), Field(), noise(), k)[-1]
    if order == 2:  # lower_order_final only ever lowered the last step, which is first order anyway
        assert torch.equal(ours[-1], lof)
    else:  # order 3 keeps UniP-3 on the second-to-last step: a different, but close, sampler
        assert 0 < rel_err(ours[-1], lof) < 0.05
