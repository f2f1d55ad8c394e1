"""The architecture as a config: the configs/model/ group, model.* overrides for inference and training, the
train -> export -> infer round trip, strict misfits, a block variant added from a test file, runtime settings
kept out of checkpoints, and the structure rules (one component registry, no upward imports)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from chronoedit.builders import compose_config
from chronoedit.checkpoint.errors import CheckpointError
from chronoedit.models.dit import ChronoEditDiT
from chronoedit.models.dit.layers import DIT_BLOCKS, DiTBlock, register_block, wan_block
from chronoedit.models.spec import MODEL_PRESETS, ModelSpec
from chronoedit.pipeline import job
from chronoedit.pipeline.config import EditConfig
from chronoedit.training.config import TrainConfig
from chronoedit.training.distributed import init_world

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
pytestmark = pytest.mark.usefixtures("one_thread")
FAST = ["sampler.steps=2", "height=32", "width=32", "runtime.device=cpu"]
TRAIN = ["experiment=tiny_lora_cpu", "steps=2", "checkpoints.every=0", "batch_size=2", "micro_batch_size=2"]


def edit_config(*overrides: str) -> tuple[EditConfig, dict]:
    return compose_config(CONFIGS, "edit", ["preset=tiny", *overrides], EditConfig)


def train_config(*overrides: str) -> tuple[TrainConfig, dict]:
    return compose_config(CONFIGS, "train", [*TRAIN, *overrides], TrainConfig)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------------------------- the group


@pytest.mark.parametrize("preset", ["base", *sorted(p.stem for p in (CONFIGS / "model").glob("*.yaml"))])
def test_every_model_preset_composes_and_builds_on_meta(preset):
    cfg, explicit = edit_config(f"model={preset}")
    assert isinstance(cfg.model, ModelSpec)
    assert explicit and all(k.split(".")[0] in ("dit", "vae", "text_encoder", "image_encoder") for k in explicit)
    if preset in MODEL_PRESETS:  # the YAML file and the Python preset are the same architecture
        assert cfg.model == MODEL_PRESETS[preset]
    if preset == "base":
        assert cfg.model == ModelSpec()
    with torch.device("meta"):
        dit = ChronoEditDiT(cfg.model.dit)
    if preset in ("base", "chronoedit_14b"):
        assert round(n_params(dit) / 1e9, 2) == 16.39  # as diffusers' ChronoEditTransformer3DModel counts it
    assert n_params(dit) > 0


def test_mismatched_interfaces_are_one_line_errors():
    with pytest.raises(Exception, match=r"model.dit.text_dim=64 != model.text_encoder.dim=32"):
        edit_config("model.dit.text_dim=64")


def test_model_overrides_are_the_explicit_ones_only():
    _, explicit = edit_config("model.dit.num_layers=3", "model.vae.base_dim=16", "seed=3")
    assert explicit == {"dit.num_layers": 3, "vae.base_dim": 16}
    _, none = edit_config("seed=3")
    assert none == {}


# ---------------------------------------------------------------------------------------------- overrides reach modules


def test_model_field_override_reaches_the_built_module_for_inference():
    cfg, explicit = edit_config("model.dit.num_layers=3", "model.dit.rope_temporal_skip_len=1", *FAST)
    pipe = job.build_pipeline(cfg, model_overrides=explicit)
    assert len(pipe.c.dit.blocks) == 3 and pipe.c.dit.cfg.rope_temporal_skip_len == 1


def test_model_field_override_reaches_the_built_module_for_training(tmp_path):
    from chronoedit.training.trainer import Trainer

    cfg, explicit = train_config("model.dit.num_layers=3", "model.dit.ffn_dim=96", "mode=full")
    trainer = Trainer(cfg, tmp_path, init_world("cpu"), explicit)
    assert len(trainer.model.blocks) == 3 and trainer.model.blocks[0].ffn[0].out_features == 96


# ---------------------------------------------------------------------------------------------- train -> infer


def test_from_scratch_training_exports_a_folder_the_cli_edits_with(tmp_path):
    run = tmp_path / "run"
    train = [sys.executable, str(ROOT / "train/train.py"), *TRAIN, "mode=full", "init=random",
             "model.dit.num_layers=3", "runtime.attention=math", f"run_dir={run}"]  # fmt: skip
    done = subprocess.run(train, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    export = run / "export"
    doc = yaml.safe_load((export / "chronoedit.yaml").read_text())
    assert doc["components"]["dit"]["config"]["num_layers"] == 3
    from chronoedit.runtime import RuntimeConfig, VAETiling

    runtime = (
        {"runtime", "attn_backend"} | set(RuntimeConfig.__dataclass_fields__) | set(VAETiling.__dataclass_fields__)
    )
    stored = {k for entry in doc["components"].values() for k in entry["config"]}
    assert not stored & runtime, stored & runtime  # runtime.* never in an exported config
    out = tmp_path / "edit"
    edit = [
        sys.executable,
        str(ROOT / "infer/edit.py"),
        "preset=tiny",
        f"checkpoint={export}",
        f"output_dir={out}",
        *FAST,
    ]
    done = subprocess.run(edit, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "edit.png").is_file()
    # the exported weights are the trained ones: loading them strictly gives the run's DiT
    from chronoedit.checkpoint.dit import load_dit

    assert len(load_dit(export, dtype=torch.float32).blocks) == 3


def test_misfit_override_fails_before_any_weight_is_read(tmp_path, monkeypatch):
    cfg, explicit = train_config("mode=full", f"run_dir={tmp_path / 'r'}")
    from chronoedit.training.trainer import Trainer

    trainer = Trainer(cfg, tmp_path / "r", init_world("cpu"))
    export = trainer.export()
    del trainer
    import chronoedit.checkpoint.load as load

    def no_read(*a, **k):
        raise AssertionError("a weight was read before the override was checked")

    monkeypatch.setattr(load, "read_tensor", no_read)
    bad, explicit = edit_config(f"checkpoint={export}", "model.dit.dim=128", *FAST)
    with pytest.raises(
        CheckpointError, match=r"model.dit.dim=128 does not fit the weights: .*misshaped: .*\(64,\) vs model \(128,\)"
    ):
        job.build_pipeline(bad, model_overrides=explicit)
    cli = [sys.executable, str(ROOT / "infer/edit.py"), "preset=tiny", f"checkpoint={export}", "model.dit.num_layers=4",
           f"output_dir={tmp_path / 'e'}", *FAST]  # fmt: skip
    done = subprocess.run(cli, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert re.search(r"error: model.dit.num_layers=4 does not fit the weights: .*missing: blocks\.2\.", done.stderr)


# ---------------------------------------------------------------------------------------------- a block variant


@register_block("test_parallel")
class ParallelBlock(nn.Module):
    """A researcher's variant in one file: the Wan block with attention and FFN in parallel (ViT-22B style)."""

    def __init__(self, cfg, attn_fn) -> None:
        super().__init__()
        self.inner: DiTBlock = wan_block(cfg, attn_fn)

    def forward(self, x, e, context, image, rope):
        b = self.inner
        return x + 0.5 * (b(x, e, context, image, rope) - x) + 0.5 * b.ffn(b.norm2(x).to(x.dtype))


def test_a_block_variant_registered_here_trains_and_edits(tmp_path):
    from chronoedit.training.run import run

    assert "test_parallel" in DIT_BLOCKS
    cfg, explicit = train_config("mode=full", "init=random", "model.dit.block=test_parallel")
    summary = run(cfg, tmp_path / "run", explicit)
    assert summary["steps"] == 2
    export = tmp_path / "run" / "export"
    edit, explicit = edit_config(f"checkpoint={export}", *FAST)
    job.run(edit, tmp_path / "edit", explicit)
    assert (tmp_path / "edit" / "edit.png").is_file()
    dit = job.build_pipeline(edit).c.dit
    assert dit.cfg.block == "test_parallel" and all(isinstance(b, ParallelBlock) for b in dit.blocks)


# ---------------------------------------------------------------------------------------------- runtime


def test_runtime_attention_is_installed_and_tiling_is_a_call_argument():
    cfg, explicit = edit_config("runtime.attention=math", "runtime.vae.tile=true", *FAST)
    pipe = job.build_pipeline(cfg, model_overrides=explicit)
    from chronoedit.ops.attention import math_attention

    assert all(b.self_attn.attn_fn is math_attention for b in pipe.c.dit.blocks)
    assert pipe.tiling.tile and not hasattr(pipe.c.vae.cfg, "tile")


# ---------------------------------------------------------------------------------------------- structure


def test_one_component_registry_and_no_upward_imports():
    lib = ROOT / "chronoedit"
    ladder = re.compile(r"""(if|elif) (name|component) == ["'](dit|vae|text_encoder|image_encoder)["']""")
    offenders = [str(p.relative_to(ROOT)) for p in lib.rglob("*.py") if ladder.search(p.read_text())]
    assert offenders == [], offenders
    upward = [
        str(p.relative_to(ROOT)) for p in (lib / "models").rglob("*.py") if "chronoedit.checkpoint" in p.read_text()
    ]
    assert upward == [], upward
