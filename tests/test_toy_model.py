"""ChronoEdit-Toy: the shipped checkpoint (size, strict load, the regression figure of a trained model's numerics,
an edit through the CLI on a scene drawn by another renderer) and every stage of its recipe for a few steps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
TOY = ROOT / "chronoedit" / "assets" / "toy"
ENV = {**os.environ, "OMP_NUM_THREADS": "2"}
sys.path.insert(0, str(ROOT))
# The shipped model's checks run once chronoedit/assets/toy exists (`make toy` writes it; not yet committed).
shipped = pytest.mark.skipif(
    not (TOY / "chronoedit.yaml").is_file(), reason="ChronoEdit-Toy is not shipped in this tree"
)


@shipped
def test_shipped_toy_is_small_complete_and_loads_strictly():
    size = sum(f.stat().st_size for f in TOY.rglob("*") if f.is_file())
    assert size <= 25 * 2**20, f"{size / 2**20:.1f} MiB"
    for name in ("chronoedit.yaml", "example.png", "MODEL_CARD.md", "recipe.json", "tokenizer/spiece.model"):
        assert (TOY / name).is_file(), name
    from chronoedit.pipeline.components import load_components

    c = load_components(str(TOY))  # strict: every key of every component present, nothing left over
    assert c.dit.cfg.text_len == 16 and c.dit.cfg.dim == 256
    assert not c.random_weights


@shipped
def test_toy_regression_success_matches_the_shipped_figure(tmp_path):
    """36 held-out edits at 8 steps: a change that breaks the trained model's numerics (a layer, the RoPE, the VAE,
    the sampler, the tokenizer) moves the success rate away from the figure measured when the model shipped."""
    from tools.make_toy import REGRESSION

    expected = json.loads((TOY / "recipe.json").read_text())["regression"]
    assert expected["args"] == REGRESSION
    out = tmp_path / "eval"
    cmd = [sys.executable, "infer/eval.py", "checkpoint=toy", f"output_dir={out}", *REGRESSION]
    done = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads((out / "metrics.json").read_text())["overall"]
    # ±3 of 36 edits: CPU kernels differ between machines and a borderline edit may flip; a broken model drops to ~0
    assert abs(got["success"]["mean"] - expected["success"]) <= 3 / 36 + 1e-9, (got["success"], expected)
    # the PSNRs are means over 36 edits: far steadier than the success count, so they pin the numerics closer
    assert abs(got["psnr_bg"]["mean"] - expected["psnr_bg"]) <= 1.0, (got["psnr_bg"], expected)
    assert abs(got["psnr"]["mean"] - expected["psnr"]) <= 1.0, (got["psnr"], expected)


def _hard_edged_scene(path: Path) -> None:
    """A scene of the toy vocabulary drawn without the toy renderer: Pillow primitives, no anti-aliasing."""
    im = Image.new("RGB", (128, 128), (245, 235, 215))  # cream
    d = ImageDraw.Draw(im)
    d.ellipse([72, 30, 100, 58], fill=(220, 50, 50))  # red circle, centre (86, 44), diameter 28
    d.rectangle([20, 80, 44, 104], fill=(50, 170, 80))  # green square
    im.save(path)


@shipped
@pytest.mark.xfail(strict=True, reason="the shipped ChronoEdit-Toy does not move objects yet (README: success by kind)")
def test_toy_cli_moves_an_independently_drawn_object(tmp_path):
    from chronoedit.toyworld.segment import as_array

    scene, out = tmp_path / "scene.png", tmp_path / "out"
    _hard_edged_scene(scene)
    cmd = [sys.executable, "infer/edit.py", "checkpoint=toy", f"image={scene}", "prompt=move the red circle left",
           "height=128", "width=128", f"output_dir={out}"]  # fmt: skip
    done = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    edit = as_array(Image.open(out / "edit.png")).astype(np.float64)
    red = np.linalg.norm(edit - np.array([220, 50, 50]), axis=-1) < 60
    ys, xs = np.nonzero(red)
    assert len(xs) > 200, "the red circle vanished"
    assert abs(xs.mean() - (86 - 32)) <= 8 and abs(ys.mean() - 44) <= 8, (xs.mean(), ys.mean())


def test_toy_recipe_runs_every_stage(tmp_path):
    """tools/make_toy.py --smoke: dataset, tokenizer, VAE, base checkpoint, pre-encoding, DiT training, export and
    evaluation for a few steps each, through the real entry points."""
    work = tmp_path / "toy"
    done = subprocess.run([sys.executable, "tools/make_toy.py", "--work", str(work), "--smoke", "--vae-snapshot-every",
                           "1", "--vae-gain", "2.45", "--vae-schedule", "constant", "--vae-object-crops", "0.5"],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    recipe = json.loads((work / "recipe.json").read_text())
    snap = json.loads((work / "vae" / "step_1" / "report.json").read_text())  # the VAE's snapshot, scored
    assert snap["step"] == 1 and set(snap["roundtrip"]) == {"success", "found", "psnr", "psnr_bg"}
    assert (work / "vae" / "step_1" / "vae.safetensors").is_file() and "roundtrip" in recipe["stages"]["vae"]
    assert list(recipe["stages"]) == ["dataset", "tokenizer", "vae", "base", "preencode", "train", "eval"]
    assert (work / "run" / "export" / "chronoedit.yaml").is_file()
    assert recipe["stages"]["tokenizer"]["longest_prompt_tokens"] <= 16  # fits the toy DiT's text_len
    again = subprocess.run([sys.executable, "tools/make_toy.py", "--work", str(work), "--smoke"], cwd=ROOT, env=ENV,
                           capture_output=True, text=True)  # fmt: skip
    assert again.returncode == 2 and "not empty" in again.stderr  # nothing the user made is overwritten


@pytest.mark.parametrize(
    "bad", [["--tag", "x"], ["--tag", "x", "--from-stage", "vae"], ["--from-stage", "base", "--to-stage", "vae"]]
)
def test_toy_recipe_tag_is_only_for_dit_ablations(tmp_path, bad):
    work = tmp_path / "w"
    work.mkdir()
    (work / "keep").write_text("x")
    done = subprocess.run([sys.executable, "tools/make_toy.py", "--work", str(work), *bad], cwd=ROOT, env=ENV,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 2 and done.stderr.count("\n") == 1
