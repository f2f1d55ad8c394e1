"""`infer/eval.py`: the config, end to end on the tiny model, the baselines, items files, sweeps, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from PIL import Image

from chronoedit.toyworld.dataset import DatasetSpec, write_dataset
from chronoedit.toyworld.eval_config import BenchmarkConfig, EvalConfig
from chronoedit.toyworld.evaluate import run_eval
from chronoedit.toyworld.report import write_eval_sweep

ROOT = Path(__file__).resolve().parents[1]
FAST = ["benchmark.size=64", "sampler.steps=2"]  # the tiny model at 64², two steps: a second per item

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _tiny(args: tuple[str, ...]) -> list[str]:
    """``preset=tiny`` (the random tiny model, as these tests assume) after Hydra's flags (``-m``)."""
    flags = [a for a in args if a in ("-m", "--multirun")]
    return [*flags, "preset=tiny", *(a for a in args if a not in flags)]


def cli(*args: str) -> subprocess.CompletedProcess:
    """infer/eval.py in a subprocess on one thread (tiny tensors: two threads only fight on a busy machine)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(ROOT / "infer" / "eval.py"), *_tiny(args)], capture_output=True, text=True,
                          cwd=ROOT, env=env)  # fmt: skip


def test_eval_yaml_states_only_what_differs_from_the_dataclass_defaults():
    from chronoedit.builders import register, to_object

    register()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
            cfg = compose(config_name="eval", overrides=["preset=tiny", "benchmark.n=3", "reasoning.steps=2"])
    finally:
        GlobalHydra.instance().clear()
    ev = to_object({k: v for k, v in cfg.items() if k != "hydra"}, EvalConfig)
    expected = EvalConfig(benchmark=BenchmarkConfig(n=3))
    expected.reasoning.steps = 2
    assert ev == expected


def test_eval_runs_end_to_end_on_the_tiny_model(tmp_path):
    out = tmp_path / "eval"
    r = cli("benchmark=toy", "benchmark.n=4", *FAST, f"output_dir={out}")
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [row["kind"] for row in rows] == ["move", "scale", "recolor", "rotate"]
    assert all(isinstance(row["success"], bool) and row["pipeline_s"] > 0 and row["eval_s"] > 0 for row in rows)
    m = json.loads((out / "metrics.json").read_text())
    assert m["n"] == 4 and set(m["by_kind"]) == {"move", "scale", "recolor", "rotate"}
    assert m["overall"]["success"]["interval"] == "wilson" and m["overall"]["psnr"]["interval"] == "t"
    assert set(m["timings"]) == {"load_s", "pipeline_s_per_item", "eval_s_per_item"}
    assert "benchmark.n=4" in m["overrides"]
    assert Image.open(out / "grid.png").size == (3 * 128, 4 * 142 + 14)
    assert sorted(p.name for p in (out / "edits").iterdir())[0] == "0000_move.png"
    assert (out / "config.yaml").is_file()
    with pytest.raises(ValueError, match="not empty"):  # a finished evaluation is not overwritten
        run_eval(EvalConfig(benchmark=BenchmarkConfig(n=1, baseline="truth")), out)


def test_the_baselines_need_no_model_and_bracket_the_metrics(tmp_path, monkeypatch):
    import chronoedit.pipeline.job as job

    monkeypatch.setattr(job, "build_pipeline", lambda *a, **k: pytest.fail("a baseline loaded a model"))
    bench = dict(n=12, size=64, grid=2)
    truth = run_eval(EvalConfig(benchmark=BenchmarkConfig(baseline="truth", **bench)), tmp_path / "truth")
    assert truth["overall"]["success"]["mean"] == 1.0 and truth["overall"]["psnr"]["mean"] == 100.0
    assert truth["overall"]["monotone"]["mean"] == 1.0 and truth["overall"]["traj_error_px"]["mean"] < 0.5
    copy = run_eval(EvalConfig(benchmark=BenchmarkConfig(baseline="copy_input", **bench)), tmp_path / "copy")
    assert copy["overall"]["success"]["mean"] == 0.0 and copy["overall"]["success"]["ci95"][0] == 0.0
    assert set(copy["by_kind"]) == {"move", "scale", "recolor", "rotate", "drop", "swap"}
    assert Image.open(tmp_path / "copy" / "grid.png").size[1] == 2 * 142 + 14


def test_the_vae_roundtrip_baseline_scores_the_truth_through_the_vae_without_the_dit(tmp_path, monkeypatch):
    """The DiT's upper bound: the true edit pair through the checkpoint's VAE, last frame; the DiT never runs."""
    import torch

    from chronoedit.models.dit.model import ChronoEditDiT
    from chronoedit.pipeline.images import image_to_tensor
    from chronoedit.toyworld.sample import sample_example

    monkeypatch.setattr(ChronoEditDiT, "forward", lambda *a, **k: pytest.fail("the roundtrip ran the DiT"))
    cfg = EvalConfig(benchmark=BenchmarkConfig(n=2, size=64, grid=0, baseline="vae_roundtrip", save_edits=True))
    m = run_eval(cfg, tmp_path / "rt")
    assert m["n"] == 2 and m["step_cache"] is None and m["timings"]["pipeline_s_per_item"] > 0
    assert 0 < m["overall"]["psnr"]["mean"] < 60  # the tiny random VAE is far from the identity
    from chronoedit.pipeline.job import build_pipeline

    vae = build_pipeline(cfg).c.vae
    ex = sample_example(cfg.benchmark.seed, 0, 64, "test")
    from chronoedit.toyworld.draw import render

    pair = [image_to_tensor(render(ex.scene), 64, 64)] + [image_to_tensor(render(ex.target), 64, 64)] * 4
    with torch.no_grad():
        video = torch.stack(pair, dim=2).to(next(vae.parameters()).dtype)
        last = vae.decode(vae.encode(video))[0, :, -1].float()  # (3, 64, 64) in [−1, 1]
    want = ((last.clamp(-1, 1) * 0.5 + 0.5) * 255).round().permute(1, 2, 0).to(torch.uint8).numpy()
    got = np.asarray(Image.open(tmp_path / "rt" / "edits" / "0000_move.png"))
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1  # rounding of the last frame


def test_an_items_file_is_evaluated_with_the_metrics_its_targets_allow(tmp_path):
    write_dataset(tmp_path / "split", DatasetSpec(n=6, seed=9, size=64, clip_ratio=0.5, split="test"))
    cfg = EvalConfig(benchmark=BenchmarkConfig(path=str(tmp_path / "split" / "truth.jsonl"), baseline="truth"))
    m = run_eval(cfg, tmp_path / "a")
    assert m["n"] == 6 and m["overall"]["success"]["mean"] == 1.0
    first = json.loads((tmp_path / "split" / "truth.jsonl").read_text().splitlines()[0])
    (tmp_path / "split" / "plain.jsonl").write_text(
        json.dumps({"image": first["image"], "prompt": "make it nice", "target": first["target"]}) + "\n"
        + json.dumps({"image": "in/000001.png", "prompt": "no target here"}) + "\n"
    )  # fmt: skip
    cfg.benchmark.path, cfg.benchmark.baseline = str(tmp_path / "split" / "plain.jsonl"), "copy_input"
    m = run_eval(cfg, tmp_path / "b")
    assert m["overall"]["psnr"]["n"] == 1 and "success" not in m["overall"]
    cfg.benchmark.baseline = "truth"
    with pytest.raises(ValueError, match="needs a 'target' image in every item"):
        run_eval(cfg, tmp_path / "c")


def test_a_two_point_multirun_writes_the_sweep_table_and_plot(tmp_path):
    sweep = tmp_path / "sweep"
    r = cli("-m", "reasoning.steps=0,2", "benchmark.n=2", *FAST, f"hydra.sweep.dir={sweep}")
    assert r.returncode == 0, r.stderr[-3000:]
    table = (sweep / "sweep.md").read_text().splitlines()
    assert table[0].startswith("| reasoning.steps | n | success") and len(table) == 4
    assert [line.split(" | ")[0] for line in table[2:]] == ["| 0", "| 2"]
    csv_rows = (sweep / "sweep.csv").read_text().splitlines()
    assert csv_rows[0].startswith("reasoning.steps,n,success,success_lo,success_hi") and len(csv_rows) == 3
    assert "traj_error_px" in table[0]  # k = steps: the whole reasoning video was decoded and scored
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert not (sweep / "sweep.png").exists() and "matplotlib is not installed" in r.stdout
    else:
        assert Image.open(sweep / "sweep.png").size[0] > 0


def test_the_sweep_plot(tmp_path):
    pytest.importorskip("matplotlib")
    for k, steps in enumerate((0, 5)):
        run = tmp_path / f"{k}_reasoning.steps={steps}"
        run.mkdir()
        overall = {"success": {"mean": 0.5, "ci95": [0.2, 0.8]}, "psnr": {"mean": 20.0 + k, "ci95": [19.0, 22.0]}}
        (run / "metrics.json").write_text(json.dumps({"overrides": [f"reasoning.steps={steps}"], "n": 4,
                                                      "overall": overall}))  # fmt: skip
    written = write_eval_sweep(tmp_path)
    assert [p.name for p in written] == ["sweep.md", "sweep.csv", "sweep.png"]
    assert Image.open(tmp_path / "sweep.png").size[0] > 0


def test_bad_benchmark_settings_are_one_line_errors_before_any_model_load():
    from chronoedit.builders import preflight, register

    sys.path.insert(0, str(ROOT / "infer"))
    try:
        from eval import check  # infer/eval.py's preflight check
    finally:
        sys.path.remove(str(ROOT / "infer"))
    register()
    for args, needle in (
        (["benchmark.baseline=oracle"], "baseline='oracle'"),
        (["benchmark.path=/nonexistent/items.jsonl"], "items file not found"),
        (["benchmark.size=100"], "size=100"),
        (["benchmark.kinds=[move,teleport]"], "kinds ['teleport']"),
        (["benchmark.nn=3"], "nn"),
    ):
        error = preflight(ROOT / "configs", "eval", ["preset=tiny", *args], schema=EvalConfig, check=check)
        assert error is not None and "\n" not in error and needle in error, error
    r = cli("benchmark.baseline=oracle")
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:") and "oracle" in lines[0]
    assert "checkpoint:" not in r.stdout  # nothing was loaded
