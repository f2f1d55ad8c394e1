"""The native format and the converter (tools/convert.py): diffusers -> native -> diffusers is bit-exact,
native loads give the same models as diffusers loads, casting keeps the fp32 islands, folders are protected."""

from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch
import yaml

from chronoedit.checkpoint.dit import load_dit
from chronoedit.checkpoint.encoders import load_image_encoder, load_text_encoder
from chronoedit.checkpoint.errors import CheckpointError
from chronoedit.checkpoint.native import INDEX, load_component, load_native_config, save_native
from chronoedit.checkpoint.resolve import resolve_checkpoint
from chronoedit.checkpoint.vae import load_vae
from chronoedit.models.dit import DIT_PRESETS, ChronoEditDiT
from tests.fixtures_pipeline import make_diffusers_pipeline_folder
from tools.convert import main as convert

diffusers = pytest.importorskip("diffusers")

LOADERS = {
    "dit": lambda p, **kw: load_dit(p, **kw),
    "vae": lambda p, **kw: load_vae(p, **kw),
    "text_encoder": lambda p, **kw: load_text_encoder(p, **kw),
    "image_encoder": lambda p, **kw: load_image_encoder(p, **kw),
}


@pytest.fixture(scope="module")
def pipe_dir(tmp_path_factory):
    return make_diffusers_pipeline_folder(tmp_path_factory.mktemp("pipe"))


@pytest.fixture(scope="module")
def native_dir(pipe_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("native") / "ckpt"
    assert convert([str(pipe_dir), str(out)]) == 0
    return out


def same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(v.dtype == sb[k].dtype and torch.equal(v, sb[k]) for k, v in sa.items())


def test_native_layout(native_dir):
    files = sorted(p.name for p in native_dir.iterdir())
    assert files == sorted([INDEX, "dit.safetensors", "vae.safetensors", "text_encoder.safetensors",
                            "image_encoder.safetensors", "tokenizer", "image_processor", "scheduler"])  # fmt: skip
    doc = yaml.safe_load((native_dir / INDEX).read_text())
    assert doc["format"] == "chronoedit-native" and doc["version"] == 1 and doc["dtype"] is None
    assert doc["components"]["dit"]["config"]["dim"] == 24
    native = load_native_config(native_dir)
    assert native.dit.num_layers == 2 and native.configs["image_encoder"].num_layers == 3
    # standard safetensors: the library reads them; our names inside
    assert "blocks.0.self_attn.q.weight" in safetensors.torch.load_file(native_dir / "dit.safetensors")
    info = resolve_checkpoint(native_dir)
    assert info.kind == "native" and info.dit == native_dir / "dit.safetensors"
    assert info.sampler()["shift"] == 5.0 and info.tokenizer == native_dir / "tokenizer"


@pytest.mark.parametrize("name", ["dit", "vae", "text_encoder", "image_encoder"])
def test_native_loads_equal_diffusers_loads(pipe_dir, native_dir, name):
    from_diffusers = LOADERS[name](pipe_dir, dtype=torch.float32)
    from_native = LOADERS[name](native_dir, dtype=torch.float32)
    assert same_state(from_native, from_diffusers)
    # a native file is self-describing: the file alone loads too
    assert same_state(load_component(native_dir / f"{name}.safetensors", dtype=torch.float32), from_diffusers)


def test_native_to_diffusers_is_bit_exact(pipe_dir, native_dir, tmp_path):
    back = tmp_path / "back"
    assert convert([str(native_dir), str(back), "--shard-size", "60KB"]) == 0
    for folder in ("transformer", "vae", "text_encoder"):
        assert len(list((back / folder).glob("*.safetensors"))) > 1  # sharded with an index
        want = {
            k: v for f in (pipe_dir / folder).glob("*.safetensors") for k, v in safetensors.torch.load_file(f).items()
        }
        got = {k: v for f in (back / folder).glob("*.safetensors") for k, v in safetensors.torch.load_file(f).items()}
        assert got.keys() == want.keys(), folder
        assert all(torch.equal(got[k], want[k]) for k in want), folder
    assert not (back / "image_encoder").exists()  # native keeps no last CLIP block: not rebuilt
    # and diffusers itself loads the written transformer to the same model
    ref = diffusers.ChronoEditTransformer3DModel.from_pretrained(str(pipe_dir / "transformer"))
    again = diffusers.ChronoEditTransformer3DModel.from_pretrained(str(back / "transformer"))
    public = lambda c: {k: v for k, v in dict(c).items() if not k.startswith("_")}  # noqa: E731
    assert public(ref.config) == public(again.config)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in ref.state_dict().items())
    assert json.loads((back / "scheduler" / "scheduler_config.json").read_text())["flow_shift"] == 5.0


def test_bf16_conversion_keeps_fp32_islands(pipe_dir, tmp_path):
    out = tmp_path / "bf16"
    assert convert([str(pipe_dir), str(out), "--dtype", "bf16", "--components", "dit,text_encoder"]) == 0
    assert load_native_config(out).files.keys() == {"dit", "text_encoder"}
    stored = safetensors.torch.load_file(out / "dit.safetensors")
    for k, v in stored.items():
        want = torch.float32 if ChronoEditDiT.keep_fp32(k) else torch.bfloat16
        assert v.dtype == want, k
    assert stored["blocks.0.modulation"].dtype == torch.float32
    # loading the bf16 file gives the model that casting the fp32 one gives
    a = load_dit(out, dtype=torch.bfloat16)
    b = load_dit(pipe_dir, dtype=torch.bfloat16)
    assert same_state(a, b)


def test_output_folder_is_protected(pipe_dir, tmp_path):
    out = tmp_path / "x"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert convert([str(pipe_dir), str(out), "--components", "dit"]) == 2
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert convert([str(pipe_dir), str(out), "--components", "dit", "--overwrite"]) == 0
    assert (out / "dit.safetensors").is_file()


def test_save_native_from_a_model_and_bad_indexes(tmp_path):
    m = ChronoEditDiT(DIT_PRESETS["tiny"]).init_weights(torch.Generator().manual_seed(0))
    save_native(tmp_path / "n", {"dit": m})
    assert same_state(load_dit(tmp_path / "n", dtype=torch.float32), m)
    index = tmp_path / "n" / INDEX
    doc = yaml.safe_load(index.read_text())
    for change, message in [
        (lambda d: d.update(version=2), "version 2"),
        (lambda d: d["components"]["dit"]["config"].update(dimm=3), r"unknown DiTConfig fields \['dimm'\]"),
        (lambda d: d["components"]["dit"].update(file="gone.safetensors"), "missing: gone.safetensors"),
        (lambda d: d.update(extra=1), r"unknown entries \['extra'\]"),
    ]:
        bad = json.loads(json.dumps(doc))
        change(bad)
        index.write_text(yaml.safe_dump(bad))
        with pytest.raises(CheckpointError, match=message):
            load_native_config(tmp_path / "n")
    # tensors that do not fit the config are refused before anything is written
    state = m.state_dict()
    state.pop("head.head.bias")
    with pytest.raises(CheckpointError, match=r"1 missing: head\.head\.bias"):
        save_native(tmp_path / "m", {"dit": (m.cfg, state)})
    assert not (tmp_path / "m" / INDEX).exists()
