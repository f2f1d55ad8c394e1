"""LoRA files: the four key schemes read into one form; fused == diffusers' load_lora_weights + fuse_lora.

The files are written here by hand (f-strings per scheme, independent of chronoedit.lora.export) from one random
LoRA; diffusers reads peft, original and kohya/musubi itself, and DiffSynth is compared with diffusers reading
the same LoRA as PEFT. Fused weights: fp32 relative error ≤ 1e-6 per tensor; unfuse is bit-exact.
"""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from chronoedit.checkpoint.errors import CheckpointError
from chronoedit.checkpoint.keymaps.dit import DIFFUSERS_TO_OURS, config_from_diffusers, config_to_diffusers
from chronoedit.checkpoint.load import load_into
from chronoedit.checkpoint.safetensors_io import save_file
from chronoedit.lora import LoRAWeights, add_adapter, fuse_lora
from chronoedit.lora.export import lora_state_dict, save_lora
from chronoedit.lora.formats import OUR_MODULES, OUR_PARAMETERS, read_lora
from chronoedit.models.dit import DIT_PRESETS, ChronoEditDiT, DiTConfig
from tests.helpers import randomize_, rel_err

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("peft")

TOL = 1e-6  # fp32 relative error of each fused weight vs diffusers

# our block linears -> diffusers names (written out, not derived from the code under test)
BLOCK = {
    "self_attn.q": "attn1.to_q", "self_attn.k": "attn1.to_k", "self_attn.v": "attn1.to_v",
    "self_attn.o": "attn1.to_out.0", "cross_attn.q": "attn2.to_q", "cross_attn.k": "attn2.to_k",
    "cross_attn.v": "attn2.to_v", "cross_attn.o": "attn2.to_out.0", "cross_attn.k_img": "attn2.add_k_proj",
    "cross_attn.v_img": "attn2.add_v_proj", "ffn.0": "ffn.net.0.proj", "ffn.2": "ffn.net.2",
}  # fmt: skip
CFG = DiTConfig(
    dim=24, num_heads=2, num_layers=2, ffn_dim=48, in_channels=36, out_channels=16, text_dim=24, image_dim=20,
    freq_dim=16,
)  # fmt: skip
RANK, ALPHA = 4, 2.0  # scale 1/2: exact in binary, so DiffSynth (no alpha) can hold the same LoRA


def make_pair(seed: int = 0):
    ref = diffusers.ChronoEditTransformer3DModel(**config_to_diffusers(CFG)).eval()
    randomize_(ref, seed)
    with torch.device("meta"):
        ours = ChronoEditDiT(config_from_diffusers(dict(ref.config)))
    # copies: assigned tensors would otherwise share storage with diffusers' (its fuse would change ours)
    load_into(ours, {k: v.clone() for k, v in DIFFUSERS_TO_OURS.convert(ref.state_dict()).items()})
    pipe = diffusers.ChronoEditPipeline(
        tokenizer=None, text_encoder=None, image_encoder=None, image_processor=None, transformer=ref, vae=None,
        scheduler=None,
    )  # fmt: skip
    return ours.eval(), pipe


def diffusers_weights(pipe) -> dict[str, torch.Tensor]:
    """The transformer's base weights under our names (PEFT wrappers and adapter tensors removed)."""
    sd = pipe.transformer.state_dict()
    return DIFFUSERS_TO_OURS.convert({k.replace(".base_layer", ""): v for k, v in sd.items() if ".lora_" not in k})


def random_lora(seed: int = 0, rank: int = RANK, alpha: float | None = ALPHA) -> dict[str, LoRAWeights]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for n in range(CFG.num_layers):
        for ours in BLOCK:
            o, i = (CFG.ffn_dim, CFG.dim) if ours == "ffn.0" else (CFG.dim, CFG.ffn_dim if ours == "ffn.2" else CFG.dim)
            out[f"blocks.{n}.{ours}"] = LoRAWeights(
                down=torch.randn(rank, i, generator=g) * 0.3, up=torch.randn(o, rank, generator=g) * 0.3, alpha=alpha
            )
    return out


def write_by_hand(lora: dict[str, LoRAWeights], scheme: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The LoRA as each scheme's files hold it (block linears only, one rank and alpha)."""
    sd, meta = {}, {}
    for name, w in lora.items():
        _, n, mod = name.split(".", 2)
        if scheme == "peft":
            base = f"transformer.blocks.{n}.{BLOCK[mod]}"
            sd[f"{base}.lora_A.weight"], sd[f"{base}.lora_B.weight"] = w.down, w.up
            targets = sorted({f"blocks.{k.split('.')[1]}.{BLOCK[k.split('.', 2)[2]]}" for k in lora})
            config = {"transformer.r": RANK, "transformer.lora_alpha": ALPHA, "transformer.target_modules": targets}
            meta = {"lora_adapter_metadata": json.dumps(config)}
        elif scheme == "original":
            base = f"diffusion_model.blocks.{n}.{mod}"
            sd[f"{base}.lora_down.weight"], sd[f"{base}.lora_up.weight"] = w.down, w.up
            sd[f"{base}.alpha"] = torch.tensor(ALPHA)
        elif scheme == "kohya":
            base = f"lora_unet_blocks_{n}_{mod.replace('.', '_')}"
            sd[f"{base}.lora_down.weight"], sd[f"{base}.lora_up.weight"] = w.down, w.up
            sd[f"{base}.alpha"] = torch.tensor(ALPHA)
        else:  # diffsynth: no alpha, the scale folded into B (×1/2 is exact)
            sd[f"blocks.{n}.{mod}.lora_A.default.weight"] = w.down
            sd[f"blocks.{n}.{mod}.lora_B.default.weight"] = w.up * (ALPHA / RANK)
    return sd, meta


SCHEMES = ["peft", "original", "kohya", "diffsynth"]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_each_scheme_reads_to_the_same_lora_and_export_writes_it_back(tmp_path, scheme):
    lora = random_lora()
    sd, meta = write_by_hand(lora, scheme)
    path = tmp_path / f"{scheme}.safetensors"
    save_file(sd, path, metadata=meta)
    got, found = read_lora(path)
    assert found == scheme
    assert set(got) == set(lora)
    for name, w in lora.items():
        assert torch.equal(got[name].delta_weight(), w.delta_weight()), name
    # our writer produces the same tensors under the same names, and reads back to the same LoRA
    written, _ = lora_state_dict(lora, scheme)
    assert set(written) == set(sd)
    assert all(torch.equal(written[k].float(), sd[k].float()) for k in sd)
    again, _ = read_lora(save_lora(lora, tmp_path / f"again_{scheme}.safetensors", scheme))
    assert all(torch.equal(again[n].delta_weight(), w.delta_weight()) for n, w in lora.items())


@pytest.mark.parametrize("scheme", SCHEMES)
def test_fused_equals_diffusers_fuse_lora_and_unfuse_is_exact(tmp_path, scheme):
    ours, pipe = make_pair()
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    lora = random_lora()
    sd, meta = write_by_hand(lora, scheme)
    save_file(sd, tmp_path / "ours.safetensors", metadata=meta)
    # diffusers reads peft, original (diffusion_model.*) and musubi (lora_unet_*) files, not DiffSynth's
    theirs = tmp_path / "ours.safetensors"
    if scheme == "diffsynth":
        theirs = tmp_path / "peft.safetensors"
        peft_sd, peft_meta = write_by_hand(lora, "peft")
        save_file(peft_sd, theirs, metadata=peft_meta)
    pipe.load_lora_weights(str(theirs), adapter_name="a")
    pipe.set_adapters(["a"], [0.7])
    pipe.fuse_lora(adapter_names=["a"])
    handle = fuse_lora(ours, [(read_lora(tmp_path / "ours.safetensors")[0], 0.7)])
    want, got = diffusers_weights(pipe), ours.state_dict()
    changed = 0
    for k in want:
        assert rel_err(got[k], want[k]) <= TOL, k
        changed += not torch.equal(want[k], before[k])
    assert changed == len(lora)  # every targeted weight and nothing else (biases untouched)
    assert rel_err(got["blocks.1.ffn.2.weight"], before["blocks.1.ffn.2.weight"]) > 1e-2  # the LoRA is not tiny
    handle.unfuse()
    assert all(torch.equal(v, before[k]) for k, v in ours.state_dict().items())


def test_two_loras_each_with_its_scale_match_diffusers(tmp_path):
    ours, pipe = make_pair(seed=3)
    l1, l2 = random_lora(seed=1), random_lora(seed=2)
    (sd1, meta1), (sd2, _) = write_by_hand(l1, "peft"), write_by_hand(l2, "kohya")
    save_file(sd1, tmp_path / "a.safetensors", metadata=meta1)
    save_file(sd2, tmp_path / "b.safetensors")
    pipe.load_lora_weights(str(tmp_path / "a.safetensors"), adapter_name="a")
    pipe.load_lora_weights(str(tmp_path / "b.safetensors"), adapter_name="b")
    pipe.set_adapters(["a", "b"], [0.7, -1.3])
    pipe.fuse_lora(adapter_names=["a", "b"])
    a, b = read_lora(tmp_path / "a.safetensors")[0], read_lora(tmp_path / "b.safetensors")[0]
    fuse_lora(ours, [(a, 0.7), (b, -1.3)])
    want, got = diffusers_weights(pipe), ours.state_dict()
    assert max(rel_err(got[k], want[k]) for k in want) <= TOL


def _extras(seed: int = 5, block_alphas_only: bool = False) -> dict[str, LoRAWeights]:
    """Non-block targets and bias deltas, ranks 2 and 3, different alphas (diffusers reads .alpha of
    original-scheme files inside the blocks only: ``block_alphas_only`` leaves the others at alpha = rank)."""
    g = torch.Generator().manual_seed(seed)
    d = CFG.dim
    shapes = {
        "head.head": (16 * 4, d), "time_projection.1": (6 * d, d), "text_embedding.0": (d, CFG.text_dim),
        "img_emb.proj.1": (CFG.image_dim, CFG.image_dim), "blocks.0.self_attn.q": (d, d), "blocks.1.ffn.0": (CFG.ffn_dim, d),
    }  # fmt: skip
    out = {}
    for i, (name, (o, k)) in enumerate(shapes.items()):
        r = 2 + i % 2
        alpha = None if block_alphas_only and not name.startswith("blocks.") else [1.0, 3.0, 8.0][i % 3]
        out[name] = LoRAWeights(
            down=torch.randn(r, k, generator=g) * 0.3, up=torch.randn(o, r, generator=g) * 0.3,
            alpha=alpha, bias=torch.randn(o, generator=g) * 0.1,
        )  # fmt: skip
    return out


@pytest.mark.parametrize("scheme", ["peft", "original"])
def test_biases_ranks_and_alphas_outside_the_blocks_match_diffusers(tmp_path, scheme):
    """PEFT: lora_B.bias with alpha/rank patterns in the metadata; original: .diff_b and .alpha. Written by
    save_lora (the training export), read by diffusers and by us."""
    ours, pipe = make_pair(seed=7)
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    lora = _extras(block_alphas_only=scheme == "original")
    path = save_lora(lora, tmp_path / "x.safetensors", scheme)
    pipe.load_lora_weights(str(path), adapter_name="x")
    pipe.set_adapters(["x"], [0.8])
    pipe.fuse_lora(adapter_names=["x"])
    read, found = read_lora(path)
    assert found == scheme
    fuse_lora(ours, [(read, 0.8)])
    want, got = diffusers_weights(pipe), ours.state_dict()
    for name in lora:
        for p in ("weight", "bias"):
            k = f"{name}.{p}"
            assert not torch.equal(want[k], before[k])
            assert rel_err(got[k], want[k]) <= TOL, k
    assert max(rel_err(got[k], want[k]) for k in want) <= TOL


def test_full_diffs_and_conv_lora_follow_the_formula(tmp_path):
    """.diff on norms / weights and a conv LoRA on the patch embedding (diffusers drops .diff keys; formula)."""
    m = ChronoEditDiT(DIT_PRESETS["tiny"]).init_weights(torch.Generator().manual_seed(0))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    pe = m.patch_embedding.weight  # (D, C, 1, 2, 2)
    sd = {
        "diffusion_model.blocks.0.norm3.diff": torch.randn(64, generator=g),
        "diffusion_model.blocks.0.norm3.diff_b": torch.randn(64, generator=g),
        "diffusion_model.blocks.1.self_attn.norm_q.diff": torch.randn(64, generator=g),
        "diffusion_model.head.head.diff": torch.randn(*m.head.head.weight.shape, generator=g),
        "diffusion_model.patch_embedding.lora_down.weight": torch.randn(3, *pe.shape[1:], generator=g),
        "diffusion_model.patch_embedding.lora_up.weight": torch.randn(pe.shape[0], 3, 1, 1, 1, generator=g),
        "diffusion_model.patch_embedding.alpha": torch.tensor(1.5),
        "diffusion_model.blocks.1.modulation.diff": torch.randn(1, 6, 64, generator=g),  # bare parameters
        "diffusion_model.head.modulation.diff": torch.randn(1, 2, 64, generator=g),
    }
    save_file(sd, tmp_path / "d.safetensors")
    lora, scheme = read_lora(tmp_path / "d.safetensors")
    assert scheme == "original"
    handle = fuse_lora(m, [(lora, 0.5)])
    got = {k: v.clone() for k, v in m.state_dict().items()}
    P = "diffusion_model."
    for param in ("blocks.1.modulation", "head.modulation"):
        torch.testing.assert_close(got[param], before[param] + 0.5 * sd[P + param + ".diff"], rtol=0, atol=0)
    handle.unfuse()
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())
    torch.testing.assert_close(
        got["blocks.0.norm3.weight"], before["blocks.0.norm3.weight"] + 0.5 * sd[P + "blocks.0.norm3.diff"]
    )
    torch.testing.assert_close(
        got["blocks.0.norm3.bias"], before["blocks.0.norm3.bias"] + 0.5 * sd[P + "blocks.0.norm3.diff_b"]
    )
    torch.testing.assert_close(got["head.head.weight"], before["head.head.weight"] + 0.5 * sd[P + "head.head.diff"])
    up, down = sd[P + "patch_embedding.lora_up.weight"].flatten(1), sd[P + "patch_embedding.lora_down.weight"]
    conv = (up @ down.flatten(1)).view_as(pe) * (1.5 / 3)
    torch.testing.assert_close(got["patch_embedding.weight"], before["patch_embedding.weight"] + 0.5 * conv)  # fmt: skip


def test_runtime_adapter_from_a_file_equals_fused():
    ours, _ = make_pair()
    lora, _ = read_lora(lora_state_dict(random_lora(), "kohya")[0])
    g = torch.Generator().manual_seed(2)
    x = (torch.randn(1, 36, 2, 4, 4, generator=g), torch.tensor([500.0]), torch.randn(1, 7, 24, generator=g),
         torch.randn(1, 257, 20, generator=g))  # fmt: skip
    with torch.no_grad():
        add_adapter(ours, lora, name="r", strength=0.6)
        runtime = ours(*x)
        from chronoedit.lora import remove_adapters

        remove_adapters(ours)
        fuse_lora(ours, [(lora, 0.6)])
        assert rel_err(runtime, ours(*x)) <= 1e-5


def test_every_lora_target_is_a_module_with_a_weight_or_a_bare_parameter():
    m = ChronoEditDiT(DIT_PRESETS["tiny"])
    modules, params = dict(m.named_modules()), dict(m.named_parameters())
    for pattern in OUR_MODULES:
        name = pattern.replace("{n}", "1")
        assert hasattr(modules[name], "weight"), name
    assert sorted(OUR_PARAMETERS) == ["blocks.{n}.modulation", "head.modulation"]
    assert all(p.replace("{n}", "1") in params for p in OUR_PARAMETERS)


def test_bare_parameter_diffs_in_kohya_naming_and_their_misfits():
    m = ChronoEditDiT(DIT_PRESETS["tiny"]).init_weights(torch.Generator().manual_seed(0))
    before = m.blocks[0].modulation.detach().clone()
    diff = torch.randn(1, 6, 64, generator=torch.Generator().manual_seed(1))
    lora, scheme = read_lora({"lora_unet_blocks_0_modulation.diff": diff})
    assert scheme == "kohya" and set(lora) == {"blocks.0.modulation"}
    fuse_lora(m, [(lora, 1.0), (lora, -0.25)])  # two LoRAs: the deltas sum in fp32
    torch.testing.assert_close(m.blocks[0].modulation.detach(), before + 0.75 * diff, rtol=0, atol=1e-6)
    with pytest.raises(CheckpointError, match=r"blocks\.0\.modulation: diff \(1, 6, 32\) vs parameter \(1, 6, 64\)"):
        fuse_lora(m, [(read_lora({"lora_unet_blocks_0_modulation.diff": torch.ones(1, 6, 32)})[0], 1.0)])
    with pytest.raises(CheckpointError, match=r"blocks\.0\.modulation: a bare parameter takes a full \.diff only"):
        read_lora({"diffusion_model.blocks.0.modulation.lora_down.weight": torch.ones(2, 64),
                   "diffusion_model.blocks.0.modulation.lora_up.weight": torch.ones(6, 2)})  # fmt: skip
    with pytest.raises(ValueError, match="only fuse_lora can apply"):
        add_adapter(m, lora, name="r")
    for scheme in ("original", "kohya"):  # written back and read again
        again, _ = read_lora(lora_state_dict(lora, scheme)[0])
        assert torch.equal(again["blocks.0.modulation"].diff, diff)
    with pytest.raises(CheckpointError, match=r"bare-parameter \.diff"):
        lora_state_dict(lora, "peft")


# ----------------------------------------------------------------------------------------------- bad files


class Payload:  # a pickled object beyond tensors and containers: refused by weights_only=True
    pass


def test_unknown_keys_are_named_or_warned(tmp_path):
    sd, _ = write_by_hand(random_lora(), "original")
    sd["diffusion_model.blocks.0.self_attn.q.dora_scale"] = torch.ones(24)
    sd["diffusion_model.blocks.0.ffn.0.hada_w1_a"] = torch.ones(24, 2)  # LoHa: not a LoRA scheme we read
    save_file(sd, tmp_path / "u.safetensors")
    with pytest.raises(CheckpointError) as e:
        read_lora(tmp_path / "u.safetensors")
    msg = str(e.value)
    assert "u.safetensors" in msg and "2 keys" in msg
    assert "blocks.0.self_attn.q.dora_scale" in msg and "blocks.0.ffn.0.hada_w1_a" in msg
    with pytest.warns(UserWarning, match="dora_scale"):
        lora, scheme = read_lora(tmp_path / "u.safetensors", strict=False)
    assert scheme == "original" and len(lora) == 24


def test_half_pairs_misfits_and_non_lora_files_are_errors(tmp_path):
    sd, _ = write_by_hand(random_lora(), "kohya")
    del sd["lora_unet_blocks_1_ffn_2.lora_up.weight"]
    with pytest.raises(CheckpointError, match=r"blocks\.1\.ffn\.2: lora_up/B missing"):
        read_lora(sd)
    with pytest.raises(CheckpointError, match="no LoRA scheme"):
        read_lora({"model.weight": torch.ones(2)})
    # a LoRA for another architecture's width: named when it is checked against the model
    lora, _ = read_lora(lora_state_dict(random_lora(), "peft")[0])
    with pytest.raises(
        CheckpointError, match=r"24 misshaped: blocks\.0\.cross_attn\.k: LoRA 24x24 vs weight \(64, 64\)"
    ):
        fuse_lora(ChronoEditDiT(DIT_PRESETS["tiny"]), [(lora, 1.0)])
    meta = {"lora_adapter_metadata": json.dumps({"transformer.use_dora": True, "transformer.r": 4})}
    save_file(*write_by_hand(random_lora(), "peft")[:1], tmp_path / "d.safetensors", metadata=meta)
    with pytest.raises(CheckpointError, match="DoRA"):
        read_lora(tmp_path / "d.safetensors")


def test_pickles_load_only_with_weights_only(tmp_path):
    sd, _ = write_by_hand(random_lora(), "original")
    torch.save(sd, tmp_path / "ok.pth")
    lora, scheme = read_lora(tmp_path / "ok.pth")
    assert scheme == "original" and len(lora) == 24

    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"x": Payload()}, f)
    with pytest.raises(CheckpointError, match=r"evil\.pth.*weights_only=True"):
        read_lora(tmp_path / "evil.pth")
    save_file(sd, tmp_path / "t.safetensors")
    data = (tmp_path / "t.safetensors").read_bytes()
    (tmp_path / "t.safetensors").write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match=r"t\.safetensors: truncated"):
        read_lora(tmp_path / "t.safetensors")
