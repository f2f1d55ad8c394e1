"""VAE key maps and configs: diffusers' and Wan's key sets at the real config convert completely, shape for shape.

Everything here is built on ``meta`` (no weights are allocated), so it is fast.
"""

from __future__ import annotations

import re

import pytest
import torch

from chronoedit.checkpoint.errors import CheckpointError
from chronoedit.checkpoint.keymaps.vae import (
    DIFFUSERS_TO_OURS,
    OURS_TO_DIFFUSERS,
    WAN_TO_OURS,
    config_from_diffusers,
    config_to_diffusers,
    diffusers_to_ours,
)
from chronoedit.models.vae import VAE_PRESETS, VAEConfig, WanVAE

diffusers = pytest.importorskip("diffusers")

# vae/config.json of the released checkpoint (nvidia/ChronoEdit-14B-Diffusers, as Wan-AI's Diffusers repos)
RELEASED_CONFIG = {
    "_class_name": "AutoencoderKLWan",
    "_diffusers_version": "0.33.0.dev0",
    "attn_scales": [],
    "base_dim": 96,
    "dim_mult": [1, 2, 4, 4],
    "dropout": 0.0,
    "latents_mean": [
        -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
        0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
    ],
    "latents_std": [
        2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
        3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.916,
    ],
    "num_res_blocks": 2,
    "temperal_downsample": [False, True, True],
    "z_dim": 16,
}  # fmt: skip


def shapes(state) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


@pytest.fixture(scope="module")
def real_models():
    cfg = VAE_PRESETS["wan21"]
    with torch.device("meta"):
        ref = diffusers.AutoencoderKLWan(**config_to_diffusers(cfg))
        ours = WanVAE(cfg)
    return ref, ours


def test_real_config_diffusers_keys_convert_completely(real_models):
    ref, ours = real_models
    ref_state = ref.state_dict()
    converted = shapes(DIFFUSERS_TO_OURS.convert(ref_state, "diffusers VAE"))
    assert converted == shapes(ours.state_dict())  # every key, every shape, nothing left over
    assert len(converted) == len(ref_state) == 194
    n = sum(p.numel() for p in ours.parameters())
    assert n == sum(p.numel() for p in ref.parameters()) == 126_892_531
    # and back: ours -> diffusers is the inverse bijection
    assert shapes(OURS_TO_DIFFUSERS.convert(ours.state_dict())) == shapes(ref_state)


def wan_name(key: str) -> str:
    """diffusers name -> original Wan 2.1 name, written from the documented correspondence (REFERENCE.md, Wan's
    vae.py) with regexes, independently of the KeyMap tables under test."""
    key = re.sub(r"^quant_conv\.", "conv1.", key)
    key = re.sub(r"^post_quant_conv\.", "conv2.", key)
    key = re.sub(r"\.conv_in\.", ".conv1.", key)
    key = re.sub(r"\.norm_out\.", ".head.0.", key)
    key = re.sub(r"\.conv_out\.", ".head.2.", key)
    key = re.sub(r"\.mid_block\.resnets\.0\.", ".middle.0.", key)
    key = re.sub(r"\.mid_block\.attentions\.0\.", ".middle.1.", key)
    key = re.sub(r"\.mid_block\.resnets\.1\.", ".middle.2.", key)
    key = re.sub(r"encoder\.down_blocks\.", "encoder.downsamples.", key)
    # decoder level i: resnets 0-2 -> upsamples 4i..4i+2, the upsampler -> 4i+3 (2 + 1 blocks and 1 resampler)
    key = re.sub(r"up_blocks\.(\d)\.resnets\.(\d)\.", lambda m: f"upsamples.{4 * int(m[1]) + int(m[2])}.", key)
    key = re.sub(r"up_blocks\.(\d)\.upsamplers\.0\.", lambda m: f"upsamples.{4 * int(m[1]) + 3}.", key)
    # inside a residual block: residual = (RMS_norm, SiLU, conv, RMS_norm, SiLU, Dropout, conv), shortcut
    for diff, wan in (("norm1", "residual.0"), ("conv1", "residual.2"), ("norm2", "residual.3")):
        key = re.sub(rf"(downsamples|upsamples|middle)\.(\d+)\.{diff}\.", rf"\1.\2.{wan}.", key)
    key = re.sub(r"(downsamples|upsamples|middle)\.(\d+)\.conv2\.", r"\1.\2.residual.6.", key)
    key = re.sub(r"\.conv_shortcut\.", ".shortcut.", key)
    return key


def test_wan_original_key_set_loads_by_identity(real_models):
    """The Wan-original key set of the real config (derived from diffusers' keys by the documented
    correspondence) is exactly our state dict, shapes included, and WAN_TO_OURS accepts all of it."""
    ref, ours = real_models
    wan = {wan_name(k): v for k, v in ref.state_dict().items()}
    assert len(wan) == 194
    expected = shapes(ours.state_dict())
    assert shapes(wan) == expected
    assert shapes(WAN_TO_OURS.convert(wan, "Wan2.1_VAE.pth")) == expected
    # spot checks against the names printed in Wan's checkpoint
    for key in (
        "encoder.downsamples.0.residual.0.gamma",
        "encoder.downsamples.5.time_conv.weight",
        "encoder.middle.1.to_qkv.weight",
        "encoder.head.2.bias",
        "decoder.upsamples.3.time_conv.weight",
        "decoder.upsamples.11.resample.1.weight",
        "decoder.upsamples.4.shortcut.weight",
        "conv1.weight",
        "conv2.bias",
    ):
        assert key in expected, key


def test_unknown_keys_are_named():
    with torch.device("meta"):
        state = dict(WanVAE(VAE_PRESETS["wan21"]).state_dict())
    state["decoder.upsamples.99.extra.weight"] = state["conv1.weight"]
    with pytest.raises(CheckpointError, match=r"decoder\.upsamples\.99\.extra\.weight"):
        WAN_TO_OURS.convert({k: v for k, v in state.items() if "extra" in k}, "wan")
    with pytest.raises(CheckpointError, match=r"encoder\.down_blocks\.0\.bogus"):
        DIFFUSERS_TO_OURS.convert({"encoder.down_blocks.0.bogus.weight": torch.empty(1)})


def test_tiny_config_map_covers_diffusers():
    cfg = VAE_PRESETS["tiny"]
    with torch.device("meta"):
        ref = diffusers.AutoencoderKLWan(**config_to_diffusers(cfg))
        ours = WanVAE(cfg)
    assert shapes(diffusers_to_ours(cfg).convert(ref.state_dict())) == shapes(ours.state_dict())


def test_released_config_maps_to_preset_and_back():
    cfg = config_from_diffusers(RELEASED_CONFIG)
    assert cfg == VAE_PRESETS["wan21"]
    assert cfg.spatial_factor == 8 and cfg.temporal_factor == 4
    back = config_to_diffusers(cfg)
    for key in ("base_dim", "z_dim", "dim_mult", "num_res_blocks", "attn_scales", "temperal_downsample"):
        assert back[key] == RELEASED_CONFIG[key], key
    assert back["latents_std"] == pytest.approx(RELEASED_CONFIG["latents_std"])
    # diffusers' constructor defaults are the released values too
    with torch.device("meta"):
        default = diffusers.AutoencoderKLWan()
    assert config_from_diffusers(dict(default.config)) == cfg


@pytest.mark.parametrize(
    "change,match",
    [
        ({"_class_name": "AutoencoderKL"}, "_class_name"),
        ({"is_residual": True}, "is_residual"),
        ({"patch_size": 2}, "patch_size"),
        ({"attn_scales": [0.5]}, "attn_scales"),
        ({"decoder_base_dim": 64}, "decoder_base_dim"),
        ({"out_channels": 12}, "out_channels"),
        ({"scale_factor_spatial": 16}, "scale_factor_spatial"),
        ({"latents_std": [1.0] * 15}, "latents_mean/latents_std"),
        ({"temperal_downsample": [True]}, "temporal_downsample"),
    ],
)
def test_unsupported_diffusers_configs_are_rejected(change, match):
    with pytest.raises(ValueError, match=match):
        config_from_diffusers({**RELEASED_CONFIG, **change})


@pytest.mark.parametrize(
    "change,match",
    [
        ({"dim_mult": ()}, "dim_mult"),
        ({"base_dim": 7}, "even"),
        ({"z_dim": 4}, "z_dim=4"),
    ],
)
def test_invalid_configs_are_rejected(change, match):
    with pytest.raises(ValueError, match=match):
        VAEConfig(**change)


@pytest.mark.parametrize(
    "change,match",
    [({"tile_size": 100}, "tile_size"), ({"tile_overlap": 160}, "tile_overlap"), ({"strip_rows": 12}, "strip_rows")],
)
def test_invalid_tilings_are_rejected_before_compute(change, match):
    from chronoedit.models.vae import VAETiling

    vae = WanVAE(VAE_PRESETS["tiny"])
    with pytest.raises(ValueError, match=match):
        vae.decode(torch.zeros(1, 16, 1, 4, 4), tiling=VAETiling(**change))
