"""Other DiT / VAE formats: one-file DiTs in the Wan naming (any prefix, fp32/fp16/bf16, ComfyUI fp8 with
scales, dequantised or kept fp8), Wan 2.1's original VAE file (.pth and .safetensors); the format is detected
and said; the full-size key sets (on ``meta``) convert completely with every shape right.

Numbers: fp32/fp16/bf16 files load bit-exactly (the stored values, cast); fp8 dequantisation equals
``fp8 · scale`` bit-exactly, is within 7% relative error of the original weights (e4m3 has a 3-bit
mantissa), and the fp8-storage model's output equals the dequantised model's (≤ 1e-6).
"""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import save_file

from chronoedit.checkpoint.convert import single_file_to_native
from chronoedit.checkpoint.detect import detect, open_checkpoint
from chronoedit.checkpoint.dit import DIT_NAMINGS, config_from_shapes, load_dit
from chronoedit.checkpoint.errors import CheckpointError
from chronoedit.checkpoint.fp8 import FP8Linear, quantize
from chronoedit.checkpoint.keymaps.dit import WAN_PREFIXES, config_to_diffusers
from chronoedit.checkpoint.load import check_keys
from chronoedit.checkpoint.vae import load_vae
from chronoedit.models.dit import DIT_PRESETS, ChronoEditDiT, DiTConfig
from chronoedit.models.vae import VAE_PRESETS, WanVAE
from tests.helpers import rel_err

# head_dim 128 as in every Wan model; width 128 is declared a "released" width below, so that the config can be
# read off the shapes alone (other widths need model.dit.num_heads: see tests/test_checkpoint_loose.py)
CFG = DiTConfig(dim=128, num_heads=1, num_layers=2, ffn_dim=256, text_dim=32, image_dim=48, freq_dim=32)


@pytest.fixture(autouse=True)
def _width_128_is_known(monkeypatch):
    from chronoedit.checkpoint.dit import RELEASED_HEADS

    monkeypatch.setitem(RELEASED_HEADS, CFG.dim, CFG.num_heads)


def model(cfg: DiTConfig = CFG, seed: int = 0) -> ChronoEditDiT:
    return ChronoEditDiT(cfg).init_weights(torch.Generator().manual_seed(seed)).eval()


def inputs(cfg: DiTConfig = CFG):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(1, 36, 2, 4, 4, generator=g), torch.tensor([600.0]), torch.randn(1, 9, cfg.text_dim, generator=g),
            torch.randn(1, 257, cfg.image_dim, generator=g))  # fmt: skip


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model.", "diffusion_model."])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_wan_single_file_any_prefix_and_dtype(tmp_path, caplog, prefix, dtype):
    m = model()
    path = tmp_path / "wan.safetensors"
    save_file({prefix + k: v.to(dtype) for k, v in m.state_dict().items()}, path)
    with caplog.at_level(logging.INFO, logger="chronoedit"):
        got = load_dit(path, dtype=torch.float32)
    assert got.cfg == CFG  # read off the shapes
    assert all(torch.equal(v, m.state_dict()[k].to(dtype).float()) for k, v in got.state_dict().items())
    said = caplog.text
    assert "wan naming" in said and (f"key prefix {prefix!r}" if prefix else "no key prefix") in said
    assert {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}[dtype] in said


def test_diffusers_named_single_file_and_config_override(tmp_path):
    from chronoedit.checkpoint.keymaps.dit import OURS_TO_DIFFUSERS

    m = model(DIT_PRESETS["tiny"])  # width 64, 2 heads: not Wan's head dim, so the config must be given
    save_file(OURS_TO_DIFFUSERS.convert(m.state_dict()), tmp_path / "d.safetensors")
    fmt = detect(open_checkpoint(tmp_path / "d.safetensors"), DIT_NAMINGS, prefixes=WAN_PREFIXES)
    assert (fmt.naming, fmt.prefix, fmt.fp8) == ("diffusers", "", None)
    with pytest.raises(CheckpointError, match=r"not in its shapes.*pass model\.dit\.num_heads="):
        load_dit(tmp_path / "d.safetensors")
    got = load_dit(tmp_path / "d.safetensors", dtype=torch.float32, config=m.cfg)
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in got.state_dict().items())


def fp8_file(m: ChronoEditDiT, path, *, style: str = "scaled") -> dict[str, torch.Tensor]:
    """ComfyUI-style fp8 file: block linear weights in e4m3fn with per-tensor scales; returns the fp8 parts."""
    out, q8 = {}, {}
    for k, v in m.state_dict().items():
        is_linear = k.startswith("blocks.") and k.endswith(".weight") and v.ndim == 2
        if not is_linear:
            out["model.diffusion_model." + k] = v.to(
                torch.bfloat16 if not ChronoEditDiT.keep_fp32(k) else torch.float32
            )
            continue
        q, s = quantize(v)
        layer = "model.diffusion_model." + k.removesuffix(".weight")
        out[f"{layer}.weight"], q8[k] = q, (q, s)
        if style.startswith("scaled"):  # the original "scaled_fp8" files
            out[f"{layer}.scale_weight"], out[f"{layer}.scale_input"] = s, torch.tensor(1.0)
        else:  # the newer per-layer format
            out[f"{layer}.weight_scale"] = s
            out[f"{layer}.comfy_quant"] = torch.tensor(
                list(json.dumps({"format": "float8_e4m3fn"}).encode()), dtype=torch.uint8
            )
    if style.startswith("scaled"):  # the marker, with the model prefix or (some repacks) without
        marker = "scaled_fp8" if style == "scaled_bare_marker" else "model.diffusion_model.scaled_fp8"
        out[marker] = torch.empty(0, dtype=torch.float8_e4m3fn)
    save_file(out, path)
    return q8


@pytest.mark.parametrize("style", ["scaled", "scaled_bare_marker", "comfy_quant"])
def test_fp8_dequantised_on_load(tmp_path, caplog, style):
    m = model()
    q8 = fp8_file(m, tmp_path / "fp8.safetensors", style=style)
    with caplog.at_level(logging.INFO, logger="chronoedit"):
        got = load_dit(tmp_path / "fp8.safetensors", dtype=torch.float32)
    assert "fp8 weights with per-tensor scales" in caplog.text and "F8_E4M3" in caplog.text
    state, ref = got.state_dict(), m.state_dict()
    for k, (q, s) in q8.items():
        assert torch.equal(state[k], q.float() * s), k  # exactly fp8 · scale
        assert rel_err(state[k], ref[k]) < 0.07, k
    with torch.no_grad():
        err = rel_err(got(*inputs()), m(*inputs()))
    assert err < 0.1, err  # fp8 weights: a visible but small difference
    bf16 = load_dit(tmp_path / "fp8.safetensors")  # default bf16: islands stay fp32
    assert (
        bf16.blocks[0].modulation.dtype == torch.float32 and bf16.blocks[0].self_attn.q.weight.dtype == torch.bfloat16
    )


def test_fp8_kept_as_fp8_storage(tmp_path):
    m = model()
    fp8_file(m, tmp_path / "fp8.safetensors")
    deq = load_dit(tmp_path / "fp8.safetensors", dtype=torch.float32)
    kept = load_dit(tmp_path / "fp8.safetensors", dtype=torch.float32, fp8="keep")
    q = kept.blocks[1].cross_attn.k_img
    assert isinstance(q, FP8Linear) and q.weight.dtype == torch.float8_e4m3fn and q.scale_weight.dtype == torch.float32
    assert not isinstance(kept.text_embedding[0], FP8Linear)  # only block linears stay fp8
    n_bytes = lambda mod: sum(p.numel() * p.element_size() for p in mod.parameters())  # noqa: E731
    assert n_bytes(kept.blocks) < 0.3 * n_bytes(deq.blocks)  # fp8 block linears: a quarter of fp32
    with torch.no_grad():
        assert rel_err(kept(*inputs()), deq(*inputs())) <= 1e-6


def test_unsupported_quantisation_and_orphan_scales_are_named(tmp_path):
    m = model()
    fp8_file(m, tmp_path / "a.safetensors", style="comfy_quant")
    from safetensors.torch import load_file

    sd = load_file(tmp_path / "a.safetensors")
    key = "model.diffusion_model.blocks.0.ffn.0.comfy_quant"
    sd[key] = torch.tensor(list(json.dumps({"format": "nvfp4"}).encode()), dtype=torch.uint8)
    save_file(sd, tmp_path / "b.safetensors")
    with pytest.raises(CheckpointError, match=r"unsupported quantisation formats.*blocks\.0\.ffn\.0 \(nvfp4\)"):
        load_dit(tmp_path / "b.safetensors")
    sd.pop(key)
    sd["model.diffusion_model.blocks.0.ffn.9.weight_scale"] = torch.tensor(1.0)
    save_file(sd, tmp_path / "c.safetensors")
    with pytest.raises(CheckpointError, match=r"scales without their weight: blocks\.0\.ffn\.9\.weight"):
        load_dit(tmp_path / "c.safetensors")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_wan_original_vae_file(tmp_path, caplog, suffix):
    cfg = VAE_PRESETS["tiny"]
    vae = WanVAE(cfg).init_weights(torch.Generator().manual_seed(0))
    path = tmp_path / f"Wan2.1_VAE{suffix}"
    if suffix == ".pth":
        torch.save(vae.state_dict(), path)
    else:
        save_file(vae.state_dict(), path)
    with caplog.at_level(logging.INFO, logger="chronoedit"):
        got = load_vae(path, config=cfg)
    assert "wan naming" in caplog.text
    assert all(torch.equal(v, vae.state_dict()[k]) for k, v in got.state_dict().items())
    # without a config the released architecture is assumed: every misfit is named
    with pytest.raises(
        CheckpointError, match=r"missing: .*unexpected: .*misshaped: decoder\.conv1\.bias \(32,\) vs model \(384,\)"
    ):
        load_vae(path)


# ------------------------------------------------------------------------------ full-size key sets on meta


def test_full_size_dit_key_sets_convert_completely():
    diffusers = pytest.importorskip("diffusers")
    cfg = DIT_PRESETS["chronoedit_14b"]
    with torch.device("meta"):
        ref = diffusers.ChronoEditTransformer3DModel(**config_to_diffusers(cfg))
        ours = ChronoEditDiT(cfg)
    for state, prefix, naming in [
        (ref.state_dict(), "", "diffusers"),
        (ours.state_dict(), "", "wan"),
        ({WAN_PREFIXES[0] + k: v for k, v in ours.state_dict().items()}, WAN_PREFIXES[0], "wan"),
        ({WAN_PREFIXES[1] + k: v for k, v in ours.state_dict().items()}, WAN_PREFIXES[1], "wan"),
    ]:
        fmt = detect(state, DIT_NAMINGS, prefixes=WAN_PREFIXES)
        assert (fmt.naming, fmt.prefix) == (naming, prefix)
        converted = DIT_NAMINGS[naming].convert({k[len(prefix) :]: v for k, v in state.items()})
        check_keys(ours, converted, "14B")  # no key missing, none left over, every shape right
        assert config_from_shapes({k: tuple(v.shape) for k, v in converted.items()}) == cfg


def test_full_size_vae_and_encoder_key_sets_convert_completely():
    diffusers = pytest.importorskip("diffusers")
    transformers = pytest.importorskip("transformers")
    from chronoedit.checkpoint.keymaps import clip as clip_map
    from chronoedit.checkpoint.keymaps import umt5 as umt5_map
    from chronoedit.checkpoint.keymaps.vae import DIFFUSERS_TO_OURS, WAN_TO_OURS
    from chronoedit.models.clip import CLIPVisionTower
    from chronoedit.models.text import UMT5Encoder

    umt5 = {"vocab_size": 256384, "d_model": 4096, "d_ff": 10240, "d_kv": 64, "num_heads": 64, "num_layers": 24,
            "feed_forward_proj": "gated-gelu"}  # fmt: skip
    clip = {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 16,
            "patch_size": 14, "image_size": 224, "projection_dim": 1024, "hidden_act": "gelu"}  # fmt: skip
    with torch.device("meta"):  # configs read as the loaders read them
        ref_vae, ours_vae = diffusers.AutoencoderKLWan(), WanVAE(VAE_PRESETS["wan21"])
        ref_t5 = transformers.UMT5EncoderModel(transformers.UMT5Config(**umt5))
        ours_t5 = UMT5Encoder(umt5_map.config_from_transformers(ref_t5.config.to_dict()))
        ref_clip = transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(**clip))
        ours_clip = CLIPVisionTower(clip_map.config_from_transformers(ref_clip.config.to_dict()))
    check_keys(ours_vae, DIFFUSERS_TO_OURS.convert(ref_vae.state_dict()), "VAE (diffusers)")
    check_keys(ours_vae, WAN_TO_OURS.convert(ours_vae.state_dict()), "VAE (Wan)")
    check_keys(ours_t5, umt5_map.TRANSFORMERS_TO_OURS.convert(umt5_map.untie_embedding(ref_t5.state_dict())), "UMT5")
    clip_keys = clip_map.transformers_to_ours(32).convert(clip_map.with_prefix(ref_clip.state_dict()))
    check_keys(ours_clip, clip_keys, "CLIP")


def test_single_files_convert_to_native(tmp_path):
    """tools/convert.py on a ComfyUI fp8 DiT (dequantised, cast to bf16) and on a Wan2.1_VAE.pth."""
    from tools.convert import main as convert

    m = model()
    fp8_file(m, tmp_path / "fp8.safetensors")
    assert convert([str(tmp_path / "fp8.safetensors"), str(tmp_path / "dit"), "--dtype", "bf16"]) == 0
    native, direct = load_dit(tmp_path / "dit"), load_dit(tmp_path / "fp8.safetensors")
    assert native.cfg == CFG
    assert all(torch.equal(v, direct.state_dict()[k]) for k, v in native.state_dict().items())
    cfg = VAE_PRESETS["tiny"]
    vae = WanVAE(cfg).init_weights(torch.Generator().manual_seed(0))
    torch.save(vae.state_dict(), tmp_path / "Wan2.1_VAE.pth")
    single_file_to_native(tmp_path / "Wan2.1_VAE.pth", tmp_path / "vae", component="vae", config=cfg)
    got = load_vae(tmp_path / "vae")
    assert got.cfg == cfg and all(torch.equal(v, vae.state_dict()[k]) for k, v in got.state_dict().items())
    assert convert([str(tmp_path / "Wan2.1_VAE.pth"), str(tmp_path / "vae2"), "--component", "vae"]) == 2  # not 2.1's
