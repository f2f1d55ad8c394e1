"""Resolving Hub ids (offline: from the Hub cache; which files are asked for) and scheduler configs."""

from __future__ import annotations

import fnmatch
import json
import shutil
from pathlib import Path

import pytest
import torch

from chronoedit.checkpoint.dit import load_dit
from chronoedit.checkpoint.errors import CheckpointError
from chronoedit.checkpoint.resolve import resolve_checkpoint
from chronoedit.checkpoint.scheduler import sampler_defaults
from chronoedit.sampling import SamplerConfig
from tests.fixtures_pipeline import make_diffusers_pipeline_folder

pytest.importorskip("diffusers")
SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def pipe_dir(tmp_path_factory):
    root = make_diffusers_pipeline_folder(tmp_path_factory.mktemp("pipe"))
    (root / "lora").mkdir()
    (root / "lora" / "chronoedit_distill_lora.safetensors").write_bytes(b"")  # only its presence matters here
    (root / "transformer" / "diffusion_pytorch_model.fp16.safetensors").write_bytes(b"")  # a variant: never fetched
    (root / "text_encoder" / "pytorch_model.bin").write_bytes(b"")  # pickles: never fetched
    return root


def hub_cache(tmp_path: Path, pipe_dir: Path, repo: str = "org/tiny") -> Path:
    """A Hub cache holding ``repo`` at ``main`` (the layout huggingface_hub reads offline)."""
    folder = tmp_path / "hub" / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(SHA)
    shutil.copytree(pipe_dir, folder / "snapshots" / SHA)
    return tmp_path / "hub"


def test_hub_id_resolves_from_the_cache_offline(tmp_path, pipe_dir):
    cache = hub_cache(tmp_path, pipe_dir)
    info = resolve_checkpoint("org/tiny", cache_dir=cache)  # HF_HUB_OFFLINE=1 in the tests
    assert info.kind == "diffusers" and info.root.name == SHA and info.source == "org/tiny"
    assert [p.name for p in info.loras] == ["chronoedit_distill_lora.safetensors"]
    assert load_dit(info.dit, dtype=torch.float32).cfg.dim == 24
    with pytest.raises(CheckpointError, match=r"org/other: cannot get .*model_index\.json.* from the Hub or its cache"):
        resolve_checkpoint("org/other", cache_dir=cache)
    with pytest.raises(CheckpointError, match="no such folder, and not an 'org/name' Hub repo id"):
        resolve_checkpoint("./not/here")


def test_only_the_needed_files_are_downloaded(tmp_path, pipe_dir, monkeypatch):
    """snapshot_download replaced by a local copier that applies the same allow / ignore patterns."""
    fetched: list[set[str]] = []

    def fake_snapshot_download(repo_id, allow_patterns, ignore_patterns, **kwargs):
        out = tmp_path / "snap"
        got = set()
        for f in pipe_dir.rglob("*"):
            rel = f.relative_to(pipe_dir).as_posix()
            allowed = any(fnmatch.fnmatch(rel, p) for p in allow_patterns)
            if f.is_file() and allowed and not any(fnmatch.fnmatch(rel, p) for p in ignore_patterns):
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, out / rel)
                got.add(rel)
        fetched.append(got)
        return str(out)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    info = resolve_checkpoint("org/tiny", components=["dit", "text_encoder"], loras=False)
    assert fetched[0] == {"model_index.json"}
    top = {p.split("/")[0] for p in fetched[1]}
    assert top == {"transformer", "text_encoder", "tokenizer", "scheduler"}  # no vae, image encoder, lora
    assert not any(p.endswith((".bin", ".fp16.safetensors")) for p in fetched[1])
    assert info.tokenizer is not None and info.vae is None and info.loras == []


def test_scheduler_configs(tmp_path):
    base = {"_class_name": "UniPCMultistepScheduler", "prediction_type": "flow_prediction", "use_flow_sigmas": True,
            "flow_shift": 2.0, "solver_order": 2, "solver_type": "bh2", "num_train_timesteps": 1000}  # fmt: skip
    (tmp_path / "scheduler_config.json").write_text(json.dumps(base))
    d = sampler_defaults(tmp_path)
    assert SamplerConfig(**d) == SamplerConfig(name="unipc", shift=2.0, order=2, solver_type="bh2")
    for change, message in [
        ({"use_karras_sigmas": True}, r"use_karras_sigmas=True \(need False\)"),
        ({"prediction_type": "epsilon"}, r"prediction_type='epsilon' \(need 'flow_prediction'\)"),
        ({"_class_name": "DDIMScheduler"}, "scheduler 'DDIMScheduler' is not supported"),
    ]:
        (tmp_path / "scheduler_config.json").write_text(json.dumps({**base, **change}))
        with pytest.raises(CheckpointError, match=message):
            sampler_defaults(tmp_path / "scheduler_config.json")
    euler = {"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0, "num_train_timesteps": 1000}
    (tmp_path / "scheduler_config.json").write_text(json.dumps(euler))
    assert SamplerConfig(**sampler_defaults(tmp_path)) == SamplerConfig(name="euler", shift=3.0, order=1)
