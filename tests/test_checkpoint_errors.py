"""Bad checkpoints give one clear error naming the file and the keys: a truncated shard, a missing shard,
wrong shapes with missing and unexpected keys (all in one message), a missing component, a corrupt index, an
unsupported config, a file that is not a checkpoint, a pickle with objects (refused by weights_only=True)."""

from __future__ import annotations

import json
import pickle
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from chronoedit.checkpoint.dit import load_dit
from chronoedit.checkpoint.encoders import load_text_encoder
from chronoedit.checkpoint.errors import CheckpointError
from chronoedit.checkpoint.resolve import resolve_checkpoint
from chronoedit.checkpoint.vae import load_vae
from tests.fixtures_pipeline import make_diffusers_pipeline_folder

pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return make_diffusers_pipeline_folder(tmp_path_factory.mktemp("pipe"))


@pytest.fixture
def pipe(pristine, tmp_path):
    """A fresh copy each test may damage."""
    return shutil.copytree(pristine, tmp_path / "pipe")


def shards(folder):
    return sorted(folder.glob("*-of-*.safetensors"))


def test_truncated_shard_names_the_file(pipe):
    shard = shards(pipe / "transformer")[1]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError, match=rf"{shard.name}: truncated file: tensor '[\w.]+' needs bytes"):
        load_dit(pipe)
    shard.write_bytes(data[:5])  # not even a header
    with pytest.raises(CheckpointError, match=rf"{shard.name}: not a safetensors file"):
        load_dit(pipe)


def test_missing_shard_and_corrupt_index(pipe):
    shard = shards(pipe / "text_encoder")[0]
    shard.unlink()
    with pytest.raises(CheckpointError, match=rf"shard files missing: {shard.name}"):
        load_text_encoder(pipe)
    (pipe / "transformer" / "diffusion_pytorch_model.safetensors.index.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt shard index"):
        load_dit(pipe)


def test_wrong_shape_missing_and_unexpected_keys_in_one_error(pipe):
    index_file = pipe / "transformer" / "diffusion_pytorch_model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    where = index["weight_map"]
    # one shard rewritten: a tensor reshaped, one removed, one added for a block the model does not have
    victim = where["blocks.0.attn1.to_q.weight"]
    sd = load_file(pipe / "transformer" / victim)
    sd["blocks.0.attn1.to_q.weight"] = sd["blocks.0.attn1.to_q.weight"][:, :23].contiguous()
    gone = next(k for k in sd if k != "blocks.0.attn1.to_q.weight")
    del sd[gone], where[gone]
    sd["blocks.7.attn1.to_k.bias"] = torch.zeros(24)
    where["blocks.7.attn1.to_k.bias"] = victim
    save_file(sd, pipe / "transformer" / victim)
    index_file.write_text(json.dumps(index))
    from chronoedit.checkpoint.keymaps.dit import DIFFUSERS_TO_OURS

    with pytest.raises(CheckpointError) as e:
        load_dit(pipe)
    msg = str(e.value)
    assert "transformer (DiT): state dict does not fit the model" in msg
    assert f"1 missing: {DIFFUSERS_TO_OURS.map_key(gone)}" in msg
    assert "1 unexpected: blocks.7.self_attn.k.bias" in msg
    assert "1 misshaped: blocks.0.self_attn.q.weight (24, 23) vs model (24, 24)" in msg
    # a key no map knows is named by the key map
    sd["blocks.0.attn1.to_qq.weight"] = torch.zeros(1)
    where["blocks.0.attn1.to_qq.weight"] = victim
    save_file(sd, pipe / "transformer" / victim)
    index_file.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"1 keys not in the key map: blocks\.0\.attn1\.to_qq\.weight"):
        load_dit(pipe)


def test_missing_component_is_named(pipe):
    shutil.rmtree(pipe / "vae")
    with pytest.raises(CheckpointError, match=r"missing components of the diffusers checkpoint: vae/"):
        resolve_checkpoint(pipe)
    with pytest.raises(CheckpointError, match=r"vae: missing component folder or its config\.json \(vae\)"):
        load_vae(pipe)
    assert resolve_checkpoint(pipe, components=["dit", "text_encoder"]).dit == pipe / "transformer"
    shutil.rmtree(pipe / "tokenizer")
    with pytest.raises(CheckpointError, match="tokenizer/"):
        resolve_checkpoint(pipe, components=["text_encoder"])


def test_unsupported_config_names_the_file(pipe):
    cfg = json.loads((pipe / "transformer" / "config.json").read_text())
    cfg["qk_norm"] = "rms_norm"
    (pipe / "transformer" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"transformer/config\.json: not a usable DiT config .*qk_norm"):
        load_dit(pipe)


class Payload:  # a pickled object beyond tensors and containers: refused by weights_only=True
    pass


def test_pickles_only_with_weights_only_and_junk_files(tmp_path):
    with open(tmp_path / "Wan2.1_VAE.pth", "wb") as f:
        pickle.dump({"encoder.conv1.weight": Payload()}, f)
    with pytest.raises(
        CheckpointError, match=r"Wan2\.1_VAE\.pth: cannot be loaded with torch\.load\(weights_only=True\)"
    ):
        load_vae(tmp_path / "Wan2.1_VAE.pth")
    torch.save({"encoder.conv1.weight": torch.zeros(2)}, tmp_path / "ok.pth")
    data = (tmp_path / "ok.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pth: cannot be loaded"):
        load_vae(tmp_path / "cut.pth")
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(CheckpointError, match=r"junk\.safetensors: cannot read safetensors header"):
        load_dit(tmp_path / "junk.safetensors")
    save_file({"some.other.model": torch.zeros(3)}, tmp_path / "other.safetensors")
    with pytest.raises(
        CheckpointError, match=r"other\.safetensors \(DiT\): not a recognised format .*keys: some\.other\.model"
    ):
        load_dit(tmp_path / "other.safetensors")
