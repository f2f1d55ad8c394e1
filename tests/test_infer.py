"""The `infer/edit.py` entry point: input checks before any model load, the files it writes, batch, multirun."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file

from chronoedit.pipeline import job
from chronoedit.pipeline.config import EditConfig, ReasoningConfig
from chronoedit.pipeline.images import load_image
from chronoedit.runtime import RuntimeConfig

ROOT = Path(__file__).resolve().parents[1]
FAST = ["max_area=16384", "sampler.steps=2"]  # ~128² pixels, two steps: a CLI run of the tiny model in seconds


def _tiny(args: tuple[str, ...]) -> list[str]:
    """``preset=tiny`` (the random tiny model, as these tests assume) after Hydra's flags (``-m``)."""
    flags = [a for a in args if a in ("-m", "--multirun")]
    return [*flags, "preset=tiny", *(a for a in args if a not in flags)]


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "infer" / "edit.py"), *_tiny(args)], capture_output=True, text=True, cwd=cwd or ROOT
    )


@pytest.fixture
def no_model_load(monkeypatch):
    def fail(*a, **k):
        raise AssertionError("a model was loaded before the inputs were checked")

    monkeypatch.setattr(job, "load_components", fail)


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(image="/nonexistent/cat.png"), "image not found: /nonexistent/cat.png"),
        (dict(num_frames=30), r"num_frames=30 must be 4k\+1"),
        (dict(reasoning=ReasoningConfig(steps=-1)), r"reasoning.steps=-1 must be >= 0"),
        (dict(height=100, width=64), "height=100 and width=64 must be positive multiples of 16"),
        (dict(height=64), "give both height and width"),
        (dict(checkpoint="not/a/path/at/all"), "neither 'tiny', an existing folder nor a Hub repo id"),
        (dict(runtime=RuntimeConfig(device="cpu", dtype="float32"), init="checkpoint"), "init=checkpoint needs"),
    ],
)
def test_bad_inputs_fail_before_any_model_load(tmp_path, no_model_load, change, message):
    with pytest.raises(ValueError, match=message):
        job.run(EditConfig(**change), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unreadable_image_and_non_empty_output_dir(tmp_path, no_model_load):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    with pytest.raises(ValueError, match="cannot read image"):
        job.run(EditConfig(image=str(bad)), tmp_path / "out")
    out = tmp_path / "mine"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(ValueError, match="exists and is not empty"):
        job.run(EditConfig(), out)
    assert (out / "precious.txt").read_text() == "keep me"


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "I;16", "P"])
def test_unusual_images_are_converted_not_rejected(tmp_path, mode):
    rgb = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    if mode == "I;16":
        im = Image.fromarray(rgb[..., 0].astype(np.uint16) * 257)  # 16-bit grayscale (mode I;16)
    elif mode == "P":
        im = Image.fromarray(rgb).convert("P")
    else:
        im = Image.fromarray(rgb).convert(mode)
    path = tmp_path / f"img_{mode.replace(';', '')}.png"
    im.save(path)
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (30, 20)
    if mode == "I;16":  # 16-bit scaled to 8 bits, not clipped
        assert np.abs(np.asarray(out)[..., 0].astype(int) - rgb[..., 0]).max() <= 1
    if mode == "RGBA":  # opaque alpha: colours unchanged
        assert np.array_equal(np.asarray(out), rgb)


def test_unknown_key_is_a_one_line_error():
    for args, needle in (
        (["no_such_key=1"], "no_such_key"),
        (["sampler.stepz=3"], "stepz"),
        (["sampler.order=7"], "order=7"),
        (["seed=abc"], "seed"),
    ):
        r = cli(*args)
        assert r.returncode != 0
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], r.stderr


def test_missing_image_is_a_one_line_error_at_the_cli(tmp_path):
    r = cli("image=/nonexistent/x.png", f"output_dir={tmp_path / 'o'}")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["error: image not found: /nonexistent/x.png"]
    assert "checkpoint:" not in r.stdout  # nothing was loaded


def test_cli_writes_every_requested_output(tmp_path):
    out = tmp_path / "edit"
    r = cli(*FAST, "reasoning.steps=2", "save_frames=true", "save_latents=true", f"output_dir={out}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "RANDOM weights" in r.stdout
    assert Image.open(out / "edit.png").size == (144, 96)  # the 4:3 example at max_area 128²
    frames = sorted((out / "frames").glob("*.png"))
    assert [f.name for f in frames[:2]] == ["0000.png", "0001.png"] and len(frames) == 29  # k ≥ steps: no drop
    latents = load_file(str(out / "latents.safetensors"))["latents"]
    assert latents.shape == (1, 16, 8, 12, 18)
    with Image.open(out / "video.webp") as v:
        assert v.n_frames == 29
    assert np.array_equal(np.asarray(Image.open(frames[-1])), np.asarray(Image.open(out / "edit.png")))
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["timings"]) == {"text", "image", "vae_encode", "denoise", "vae_decode"}
    assert "reasoning" in (out / "config.yaml").read_text()
    # running again into the same folder is refused, and overwrite=true allows it
    again = cli(*FAST, f"output_dir={out}")
    assert again.returncode == 2 and "not empty" in again.stderr
    assert cli(*FAST, f"output_dir={out}", "overwrite=true").returncode == 0


def test_batch_mode(tmp_path):
    img = tmp_path / "a.png"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(img)
    rows = [{"image": "a.png", "prompt": "make it blue"}, {"image": str(img), "prompt": "add a hat", "seed": 3}]
    (tmp_path / "edits.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "batch"
    r = cli(*FAST, f"batch={tmp_path / 'edits.jsonl'}", f"output_dir={out}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["0000_a", "0001_a"]
    assert json.loads((out / "summary.json").read_text())["edits"] == 2
    assert json.loads((out / "0001_a" / "summary.json").read_text())["seed"] == 3


def test_multirun_sweep_of_reasoning_steps(tmp_path):
    sweep = tmp_path / "sweep"
    r = cli("-m", *FAST, "reasoning.steps=0,1", f"hydra.sweep.dir={sweep}")
    assert r.returncode == 0, r.stderr[-2000:]
    runs = sorted(p.name for p in sweep.iterdir() if p.is_dir())  # named by job number and overrides
    assert len(runs) == 2 and runs[0].startswith("0_") and runs[1].startswith("1_")
    assert "reasoning.steps=0" in runs[0] and "reasoning.steps=1" in runs[1]
    assert all((sweep / d / "edit.png").is_file() for d in runs)
    assert json.loads((sweep / runs[1] / "summary.json").read_text())["dropped_at_step"] == 1
    assert Image.open(sweep / "grid.png").size == (2 * 256, 256 + 28)
    table = (sweep / "timings.md").read_text()
    assert runs[0] in table and runs[1] in table and "denoise" in table


def test_lora_from_the_command_line_changes_the_edit(tmp_path):
    """A LoRA file (kohya naming here) given as ``lora=[{path, scale}]`` is read, fused and changes the edit."""
    import torch

    from chronoedit.lora import LoRAWeights
    from chronoedit.lora.export import save_lora
    from chronoedit.pipeline.components import tiny_components

    dit = tiny_components().dit
    g = torch.Generator().manual_seed(0)
    loras = {}
    for name in ("blocks.0.self_attn.q", "blocks.1.ffn.0", "head.head"):
        lin = dit.get_submodule(name)
        loras[name] = LoRAWeights(
            down=torch.randn(4, lin.in_features, generator=g), up=torch.randn(lin.out_features, 4, generator=g)
        )
    path = save_lora(loras, tmp_path / "my_lora.safetensors", scheme="kohya")
    plain = cli(*FAST, "save_latents=true", f"output_dir={tmp_path / 'plain'}")
    lora = cli(*FAST, "save_latents=true", f"output_dir={tmp_path / 'lora'}", f"lora=[{{path: {path}, scale: 0.5}}]")
    assert plain.returncode == 0 and lora.returncode == 0, lora.stderr[-2000:]
    assert f"LoRA: {path} (kohya, scale 0.5, fused)" in lora.stdout
    a = load_file(str(tmp_path / "plain" / "latents.safetensors"))["latents"]
    b = load_file(str(tmp_path / "lora" / "latents.safetensors"))["latents"]
    assert (a - b).abs().max() > 1e-3
    missing = cli(*FAST, f"output_dir={tmp_path / 'x'}", "lora=[{path: /nope.safetensors}]")
    assert missing.returncode == 2 and missing.stderr.strip() == "error: LoRA file not found: /nope.safetensors"
