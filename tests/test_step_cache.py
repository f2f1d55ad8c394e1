"""Step caching (``runtime.step_cache=magcache``): it skips DiT forwards where the calibrated residual-ratio curve
is flat, never on the first, the retained or the last steps, resets at the reasoning drop, makes one decision
per step for both CFG branches, reports its counts in ``summary.json``; ``step_cache=none`` is today's edit bit
for bit; bad settings are one-line ValueErrors; training refuses it; the calibration tool writes a file the
edit reads."""

from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image

from chronoedit.models.dit import DIT_PRESETS, ChronoEditDiT, ContextCache
from chronoedit.pipeline import EditPipeline, EditRequest
from chronoedit.pipeline import job as job_module
from chronoedit.pipeline.components import tiny_components
from chronoedit.pipeline.config import EditConfig
from chronoedit.runtime import RuntimeConfig
from chronoedit.sampling import FrameDrop, SamplerConfig, build_solver, flow_schedule, sample
from chronoedit.sampling.step_cache import (
    CALIBRATION_FORMAT,
    Calibration,
    Calibrator,
    MagCache,
    MagCacheSettings,
    resample,
)
from tests.helpers import rel_err

pytestmark = pytest.mark.usefixtures("one_thread")


def flat(steps: int) -> Calibration:
    """A smooth trajectory's curve: every residual as large as the last (γ = 1), so the error never grows."""
    return Calibration(steps, (1.0,) * steps, (1.0,) * steps)


def _image(seed: int = 3) -> Image.Image:
    return Image.fromarray((torch.rand(32, 32, 3, generator=torch.Generator().manual_seed(seed)) * 255).byte().numpy())


def _request(**kw) -> EditRequest:
    return EditRequest(**{"image": _image(), "prompt": "move the red circle left", "height": 32, "width": 32,
                          "guidance_scale": 4.0, **kw})  # fmt: skip


class Spy(MagCache):
    """MagCache that logs (step, branch, skipped) of every DiT call."""

    def __init__(self, *a) -> None:
        super().__init__(*a)
        self.calls: list[tuple[int, str, bool]] = []

    def forward(self, dit, branch, *a):
        self.calls.append((self.step, branch, self.skip))
        return super().forward(dit, branch, *a)


class SpySettings(MagCacheSettings):
    def start(self, num_steps, solver):
        super().start(num_steps, solver)  # the solver check
        self.spy = Spy(self, num_steps)
        return self.spy


# ------------------------------------------------------------------ the decisions
def _decisions(settings: MagCacheSettings, steps: int, shapes=None) -> list[int]:
    cache = settings.start(steps, "unipc")
    for i in range(steps):
        shape = (1, 16, 8 if shapes is None or i < shapes else 2, 4, 4)
        cache.begin_step(torch.zeros(shape))
        if not cache.skip:
            cache._residual["cond"] = torch.zeros(1)  # a computed step leaves a residual
    return cache.stats.skipped_steps


def test_flat_curve_skips_up_to_k_in_a_row_after_the_retained_steps_and_never_the_last():
    # 10 steps, retention 0.2: steps 0, 1 computed; then K = 2 skips, one compute, …; step 9 (the last) computed
    assert _decisions(MagCacheSettings(flat(10), threshold=0.1, max_skips=2, retention=0.2), 10) == [2, 3, 5, 6, 8]
    # no retention, unlimited skips: still the first step (nothing cached yet) and the last are computed
    assert _decisions(MagCacheSettings(flat(10), threshold=0.1, max_skips=100, retention=0.0), 10) == list(range(1, 9))


def test_the_error_accumulates_and_a_computed_step_resets_it():
    # γ = 1.05 per step: the accumulated errors of 1, 2, 3 skips are 0.05, 0.05 + 0.1025, …
    cal = Calibration(8, (1.0,) + (1.05,) * 7)
    assert _decisions(MagCacheSettings(cal, threshold=0.1, max_skips=5, retention=0.0), 8) == [1, 3, 5]
    assert _decisions(MagCacheSettings(cal, threshold=0.2, max_skips=5, retention=0.0), 8) == [1, 2, 4, 5]
    assert _decisions(MagCacheSettings(cal, threshold=0.01, max_skips=5, retention=0.0), 8) == []


def test_a_shape_change_resets_the_cache():
    s = MagCacheSettings(flat(10), threshold=0.1, max_skips=100, retention=0.0)
    skipped = _decisions(s, 10, shapes=4)  # 8 latent frames for steps 0-3, then 2
    assert skipped == [1, 2, 3, 5, 6, 7, 8]  # step 4 (the drop) is computed: no residual crosses it


def test_calibrations_resample_by_nearest_neighbour_and_check_themselves(tmp_path):
    assert resample([1.0, 2.0, 3.0], 5) == (1.0, 1.0, 2.0, 3.0, 3.0)  # indices round(0, .5, 1, 1.5, 2), half to even
    assert resample([1.0, 2.0, 3.0], 1) == (3.0,)
    cal = Calibration(3, (1.0, 0.9, 0.8), None, {"checkpoint": "tiny"})
    path = tmp_path / "c.json"
    path.write_text(cal.to_json())
    assert Calibration.load(path) == cal
    for text, message in [
        ("{", "not a JSON file"),
        (json.dumps({"format": "x"}), "not a MagCache calibration"),
        (json.dumps({"format": CALIBRATION_FORMAT, "method": "magcache", "steps": 3, "cond": [1, 1]}), "2 cond"),
        (json.dumps({"format": CALIBRATION_FORMAT, "method": "magcache", "steps": 2, "cond": [1, -1]}), "> 0"),
    ]:
        path.write_text(text)
        with pytest.raises(ValueError, match=message) as e:
            Calibration.load(path)
        assert "\n" not in str(e.value) and str(path) in str(e.value)
    with pytest.raises(ValueError, match="file not found"):
        Calibration.load(tmp_path / "none.json")


# ------------------------------------------------------------------ on the DiT
@pytest.fixture(scope="module")
def dit():
    return ChronoEditDiT(DIT_PRESETS["tiny"]).init_weights(torch.Generator().manual_seed(0)).eval()


def _inputs(cfg, g, f=2, lt=7):
    return (
        torch.randn(1, cfg.in_channels, f, 4, 6, generator=g),
        torch.cat([torch.randn(1, lt, cfg.text_dim, generator=g), torch.zeros(1, 512 - lt, cfg.text_dim)], dim=1),
        torch.randn(1, 5, cfg.image_dim, generator=g),
        torch.full((1,), lt),
    )


@torch.no_grad()
@pytest.mark.parametrize("use_context_cache", [False, True])
def test_computed_steps_are_the_dit_forward_bit_for_bit_and_a_steady_input_is_skipped_exactly(dit, use_context_cache):
    """The staged forward equals ``dit.forward``; on a trajectory whose input does not move (γ = 1 measured) a
    skipped step returns the computed output up to one rounding."""
    g = torch.Generator().manual_seed(1)
    x, ctx, clip, lens = _inputs(dit.cfg, g)
    t = torch.full((1,), 500.0)
    cc = ContextCache() if use_context_cache else None
    recorder = Calibrator().start(4, "unipc")
    for _ in range(4):
        recorder.begin_step(x)
        assert torch.equal(recorder.forward(dit, "cond", x, t, ctx, clip, lens, cc), dit(x, t, ctx, clip, lens))
    assert recorder.ratios["cond"] == pytest.approx([1.0] * 4, abs=1e-6)
    cache = MagCacheSettings(flat(4), threshold=0.1, max_skips=2, retention=0.0).start(4, "unipc")
    want = dit(x, t, ctx, clip, lens)
    for i in range(4):
        cache.begin_step(x)
        got = cache.forward(dit, "cond", x, t, ctx, clip, lens, cc)
        assert cache.skip == (i in (1, 2))
        assert torch.equal(got, want) if not cache.skip else rel_err(got, want) <= 1e-6
    assert (cache.stats.forwards, cache.stats.skipped) == (4, 2)


# ------------------------------------------------------------------ in the pipeline
def _today(pipe: EditPipeline, request: EditRequest, sampler: SamplerConfig) -> torch.Tensor:
    """The edit's final latents through the velocity closure without any step cache (the code before it)."""
    from chronoedit.pipeline.pipeline import Text

    frames, k = request.video_frames, request.reasoning_steps
    solver, sched = build_solver(sampler), flow_schedule(sampler.steps, sampler.shift, sampler.num_train_timesteps)
    emb, lens = pipe.encode_text([request.prompt, request.negative_prompt])
    text = Text(emb[:1], lens[:1], emb[1:], lens[1:])
    image = request.image  # already the edit's size (32 × 32)
    clip, condition = pipe.encode_image(image), pipe.encode_condition(image, request.height, request.width, frames)
    from chronoedit.pipeline.condition import check_num_frames

    x = torch.randn((1, 16, check_num_frames(frames), 4, 4), generator=torch.Generator("cpu").manual_seed(request.seed))
    drop = FrameDrop(step=k) if k > 0 else None
    model = pipe.velocity(condition, FrameDrop.keep, text, clip, request.guidance_scale)
    with torch.no_grad():
        return sample(model, x, sched, solver, drop=drop)


@pytest.mark.parametrize("cfg_batched", [False, True])
def test_step_cache_none_is_todays_edit_bit_for_bit(cfg_batched):
    request, sampler = _request(reasoning_steps=2, num_frames=29), SamplerConfig(steps=4)
    pipe = EditPipeline(tiny_components(), cfg_batched=cfg_batched, progress=False)
    result = pipe(request, sampler)
    assert torch.equal(result.latents, _today(pipe, request, sampler))
    assert (result.step_cache.method, result.step_cache.skipped) == ("none", 0)
    assert result.step_cache.forwards == (4 if cfg_batched else 8)


def test_one_decision_per_step_for_both_cfg_branches_and_a_reset_at_the_reasoning_drop():
    settings = SpySettings(flat(8), threshold=0.5, max_skips=2, retention=0.0)
    pipe = EditPipeline(tiny_components(), step_cache=settings, progress=False)
    result = pipe(_request(reasoning_steps=3, num_frames=29), SamplerConfig(steps=8))
    calls = settings.spy.calls
    assert [(s, b) for s, b, _ in calls] == [(s, b) for s in range(8) for b in ("cond", "uncond")]
    decisions = {s: {skip for t, _, skip in calls if t == s} for s in range(8)}
    assert all(len(d) == 1 for d in decisions.values()), decisions  # cond and uncond decided together
    stats = result.step_cache
    assert result.dropped_at == 3 and stats.resets == 1
    assert stats.skipped_steps == [1, 2, 4, 5]  # 0 first, 3 the drop (reset), 6 after K = 2, 7 the last
    assert (stats.forwards, stats.skipped) == (16, 8)
    exact = EditPipeline(tiny_components(), progress=False)(_request(reasoning_steps=3, num_frames=29),
                                                            SamplerConfig(steps=8))  # fmt: skip
    assert 0 < rel_err(result.latents, exact.latents) < 1.0  # approximate, not broken


def test_batched_cfg_skips_the_one_doubled_call():
    pipe = EditPipeline(tiny_components(), cfg_batched=True, progress=False,
                        step_cache=MagCacheSettings(flat(6), threshold=0.5, max_skips=2, retention=0.0))  # fmt: skip
    stats = pipe(_request(), SamplerConfig(steps=6)).step_cache
    assert stats.skipped_steps == [1, 2, 4] and (stats.forwards, stats.skipped) == (6, 3)


def test_heun_and_several_processes_are_refused():
    with pytest.raises(ValueError, match="one model evaluation per step"):
        MagCacheSettings(flat(4)).start(4, "heun")
    with pytest.raises(ValueError, match="single-process ChronoEditDiT"):
        cache = MagCacheSettings(flat(4)).start(4, "unipc")
        cache.begin_step(torch.zeros(1))
        cache.forward(torch.nn.Identity(), "cond", *([None] * 6))


def test_summary_json_reports_the_skipped_forwards_and_the_calibration_tool_feeds_it(tmp_path):
    from tools.calibrate_step_cache import main as calibrate_main

    fast = ["preset=tiny", "sampler.steps=6", "height=32", "width=32", "guidance_scale=4.0"]
    calib = tmp_path / "calib.json"
    assert calibrate_main(["--out", str(calib), "--prompt", "move it", "--prompt", "grow it", *fast]) == 0
    cal = Calibration.load(calib)
    assert cal.steps == 6 and cal.cond[0] == 1.0 and cal.uncond is not None and cal.meta["samples"] == 2
    assert all(math.isfinite(v) and v > 0 for v in cal.cond)

    rt = RuntimeConfig(step_cache="magcache", step_cache_calibration=str(calib), step_cache_threshold=100.0,
                       step_cache_retention=0.0)  # fmt: skip
    cfg = EditConfig(sampler=SamplerConfig(steps=6), height=32, width=32, runtime=rt)
    summary = job_module.run(cfg, tmp_path / "out")
    written = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert written["step_cache"] == summary["step_cache"]
    assert written["step_cache"]["method"] == "magcache"
    assert written["step_cache"]["forwards"] == 12 and written["step_cache"]["skipped"] == 6  # steps 1, 2, 4
    plain = job_module.run(EditConfig(sampler=SamplerConfig(steps=6), height=32, width=32), tmp_path / "plain")
    assert plain["step_cache"] == {"method": "none", "forwards": 12, "skipped": 0, "skipped_steps": [], "resets": 0}


def test_a_missing_calibration_fails_before_any_model_load(tmp_path, monkeypatch):
    monkeypatch.setattr(job_module, "load_components", lambda *a, **k: pytest.fail("a model was loaded"))
    rt = RuntimeConfig(step_cache="magcache", step_cache_calibration=str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match=r"missing\.json: file not found"):
        job_module.run(EditConfig(runtime=rt), tmp_path / "out")
    calib = tmp_path / "c.json"
    calib.write_text(flat(4).to_json())
    rt = RuntimeConfig(step_cache="magcache", step_cache_calibration=str(calib))
    with pytest.raises(ValueError, match="not heun"):
        job_module.run(EditConfig(runtime=rt, sampler=SamplerConfig(name="heun", order=2)), tmp_path / "out2")


# ------------------------------------------------------------------ configuration
@pytest.mark.parametrize(
    "kw,message",
    [
        (dict(step_cache="teacache"), r"runtime.step_cache='teacache' is not one of \['none', 'magcache'\]"),
        (dict(step_cache_threshold=0.0), "runtime.step_cache_threshold=0.0 must be a finite number > 0"),
        (dict(step_cache_threshold=float("nan")), "runtime.step_cache_threshold=nan"),
        (dict(step_cache_max_skips=0), "runtime.step_cache_max_skips=0 must be an int ≥ 1"),
        (dict(step_cache_retention=1.0), r"runtime.step_cache_retention=1.0 must be a number in \[0, 1\)"),
        (dict(step_cache_retention=-0.1), "runtime.step_cache_retention=-0.1"),
        (dict(step_cache="magcache"), "runtime.step_cache=magcache needs runtime.step_cache_calibration"),
    ],
)
def test_bad_settings_are_one_line_value_errors(kw, message):
    with pytest.raises(ValueError, match=message) as e:
        RuntimeConfig(**kw)
    assert "\n" not in str(e.value)


def test_a_bad_override_is_a_one_line_error_at_the_command_line():
    from chronoedit.builders import preflight
    from tests.test_infer import ROOT

    error = preflight(ROOT / "configs", "edit", ["preset=tiny", "runtime.step_cache=fast"])
    assert error is not None and "runtime.step_cache='fast'" in error and "\n" not in error


def test_training_refuses_a_step_cache(tmp_path):
    from chronoedit.training.config import TrainConfig

    rt = RuntimeConfig(step_cache="magcache", step_cache_calibration=str(tmp_path / "c.json"))
    with pytest.raises(ValueError, match=r"runtime\.step_cache='magcache' is an inference setting"):
        TrainConfig(runtime=rt)
    TrainConfig(runtime=RuntimeConfig())  # the default is fine


def test_the_calibration_tool_reads_a_native_checkpoint_folder(tmp_path):
    """Any checkpoint the edit loads: here a native folder (converted from a tiny diffusers-layout one), with the
    reasoning drop in the calibrated edits (γ = 1 recorded at the drop)."""
    pytest.importorskip("diffusers")
    from tests.fixtures_pipeline import make_diffusers_pipeline_folder
    from tools.calibrate_step_cache import main as calibrate_main
    from tools.convert import main as convert

    native = tmp_path / "native"
    assert convert([str(make_diffusers_pipeline_folder(tmp_path / "pipe")), str(native)]) == 0
    out = tmp_path / "calib.json"
    args = ["preset=tiny", f"checkpoint={native}", "sampler.steps=6", "height=32", "width=32", "reasoning.steps=2"]
    assert calibrate_main(["--out", str(out), "--prompt", "move it", *args]) == 0
    cal = Calibration.load(out)
    assert cal.steps == 6 and cal.cond[2] == 1.0 and cal.meta["checkpoint"] == str(native)
