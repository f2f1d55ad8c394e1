"""Parity of our CLIP vision tower with transformers' CLIPVisionModelWithProjection `hidden_states[-2]` (fp32,
relative error ≤ 1e-5), of ImagePreprocessor with CLIPImageProcessor (exact), and strict loading.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from chronoedit.checkpoint.encoders import load_image_encoder as load_clip_vision
from chronoedit.checkpoint.errors import CheckpointError
from chronoedit.checkpoint.keymaps.clip import config_from_transformers, config_to_transformers, transformers_to_ours
from chronoedit.checkpoint.load import load_into
from chronoedit.checkpoint.safetensors_io import save_file
from chronoedit.models.clip import CLIP_PRESETS, CLIPVisionConfig, CLIPVisionTower, ImagePreprocessor
from chronoedit.models.precision import cast_params
from tests.helpers import randomize_, rel_err

transformers = pytest.importorskip("transformers")

TOL = 1e-5  # fp32 relative error, ‖ours − ref‖ / ‖ref‖


def make_pair(cfg: CLIPVisionConfig, seed: int = 0):
    ref = transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(**config_to_transformers(cfg, 24)))
    randomize_(ref.eval(), seed)
    with torch.device("meta"):
        ours = CLIPVisionTower(config_from_transformers(ref.config.to_dict()))
    load_into(ours, transformers_to_ours(cfg.num_layers).convert(ref.state_dict()), what="transformers CLIP")
    return ours.eval(), ref


def penultimate(ref, pixels):
    return ref(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]


QUICK_GELU = CLIPVisionConfig(
    dim=48, ffn_dim=96, num_heads=2, num_layers=4, patch_size=8, image_size=32, activation="quick_gelu", eps=1e-6
)


@pytest.mark.parametrize(
    "cfg,batch",
    [
        (CLIPVisionConfig(dim=64, ffn_dim=128, num_heads=4, num_layers=3, patch_size=14, image_size=56), 2),
        (QUICK_GELU, 3),
        (CLIP_PRESETS["tiny"], 1),
        (CLIPVisionConfig(dim=32, ffn_dim=32, num_heads=2, num_layers=1, patch_size=7, image_size=14), 2),  # 0 blocks
    ],
)
def test_tower_matches_transformers_penultimate(cfg, batch):
    ours, ref = make_pair(cfg)
    pixels = torch.randn(batch, 3, cfg.image_size, cfg.image_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = penultimate(ref, pixels)
        got = ours(pixels)
    assert got.shape == want.shape == (batch, cfg.num_tokens, cfg.dim)
    assert len(ours.blocks) == cfg.num_layers - 1
    err = rel_err(got, want)
    assert err <= TOL, f"relative error {err:.2e} > {TOL}"


def test_bf16_keeps_norms_fp32_and_agrees_with_fp32():
    cfg = CLIPVisionConfig(dim=64, ffn_dim=128, num_heads=4, num_layers=3, patch_size=14, image_size=56)
    ours, _ = make_pair(cfg)
    pixels = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = ours(pixels)
        cast_params(ours, torch.bfloat16, CLIPVisionTower.keep_fp32)
        got = ours(pixels)
    dtypes = {n: p.dtype for n, p in ours.named_parameters()}
    assert dtypes["pre_norm.weight"] == dtypes["blocks.1.norm2.bias"] == torch.float32
    assert dtypes["patch_embedding.weight"] == dtypes["blocks.0.attn.q.weight"] == torch.bfloat16
    assert got.dtype == torch.bfloat16 and rel_err(got, want) < 3e-2


# ------------------------------------------------------------------------------------------------ preprocessing

RELEASED_PROCESSOR = {  # ChronoEdit's image_processor/preprocessor_config.json
    "crop_size": {"height": 224, "width": 224}, "do_center_crop": True, "do_convert_rgb": True,
    "do_normalize": True, "do_rescale": True, "do_resize": True,
    "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_processor_type": "CLIPImageProcessor",
    "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "rescale_factor": 0.00392156862745098,
    "size": {"shortest_edge": 224},
}  # fmt: skip
OTHER_PROCESSORS = [
    # non-square crop, bilinear, other statistics
    dict(
        size={"shortest_edge": 64},
        crop_size={"height": 48, "width": 56},
        resample=2,
        image_mean=[0.5] * 3,
        image_std=[0.25, 0.5, 0.75],
    ),
    {"size": 40, "crop_size": 52},  # old int sizes; a crop larger than the resize: zero padding
    {"size": {"height": 30, "width": 20}, "do_center_crop": False, "do_normalize": False},
]


def sample_images():
    g = np.random.default_rng(0)
    yy, xx = np.mgrid[0:173, 0:300]
    smooth = np.stack([xx * 255 / 300, yy * 255 / 173, (xx + yy) % 256], -1)
    rgb = np.clip(smooth + g.normal(0, 20, smooth.shape), 0, 255).astype(np.uint8)
    alpha = (xx * 255 // 300).astype(np.uint8)
    palette = Image.fromarray(rgb[:90, :120]).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 3
    return {
        "landscape RGB": Image.fromarray(rgb),
        "portrait RGB": Image.fromarray(rgb[:, :97].copy()).transpose(Image.Transpose.ROTATE_90),
        "RGBA": Image.fromarray(np.dstack([rgb, alpha])),
        "grayscale L": Image.fromarray(rgb[..., 0]),
        "LA": Image.fromarray(np.dstack([rgb[..., 1], alpha])).convert("LA"),
        "16-bit I;16": Image.fromarray(rgb[..., 2].astype(np.uint16) * 257).convert("I;16"),
        "32-bit I": Image.fromarray(rgb[..., 0].astype(np.int32) * 3),
        "palette + transparency": palette,
        "tiny 5×3": Image.fromarray(rgb[:3, :5]),
    }


@pytest.mark.parametrize("config", [RELEASED_PROCESSOR, *OTHER_PROCESSORS])
def test_preprocessing_matches_clip_image_processor(config):
    ref = transformers.CLIPImageProcessor(**config)
    ours = ImagePreprocessor.from_config(config)
    for name, image in sample_images().items():
        want = ref(images=[image], return_tensors="pt").pixel_values
        got = ours([image])
        assert got.dtype == want.dtype == torch.float32, name
        assert got.shape == want.shape, f"{name}: {tuple(got.shape)} vs {tuple(want.shape)}"
        assert torch.equal(got, want), f"{name}: max abs diff {(got - want).abs().max():.3g}"


def test_preprocessor_from_folder_reads_sizes(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({**RELEASED_PROCESSOR, **OTHER_PROCESSORS[0]}))
    pre = ImagePreprocessor.from_folder(tmp_path)
    images = list(sample_images().values())[:3]
    assert pre(images).shape == (3, 3, 48, 56) and pre.output_size == (48, 56)
    with pytest.raises(ValueError, match="unsupported keys: do_pad"):
        ImagePreprocessor.from_config({**RELEASED_PROCESSOR, "do_pad": True})
    with pytest.raises(ValueError, match=r"expected a PIL\.Image\.Image"):
        pre([np.zeros((4, 4, 3), np.uint8)])
    with pytest.raises(ValueError, match="crop_size"):
        ImagePreprocessor.from_config({"crop_size": {"height": 4}})


# ---------------------------------------------------------------------------------------------------- loading


def test_load_folder_strict_with_dropped_keys(tmp_path):
    cfg = CLIPVisionConfig(dim=32, ffn_dim=64, num_heads=2, num_layers=3, patch_size=14, image_size=28)
    _, ref = make_pair(cfg)
    ref.save_pretrained(str(tmp_path))
    pixels = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        want = penultimate(ref, pixels)
        got = load_clip_vision(tmp_path, dtype=torch.float32)(pixels)
    assert rel_err(got, want) <= TOL
    tower = load_clip_vision(tmp_path)  # bf16 by default, norms fp32
    assert tower.blocks[0].mlp.fc1.weight.dtype == torch.bfloat16 and tower.pre_norm.weight.dtype == torch.float32
    # a 4th block is not in a 3-layer checkpoint's map: an error, not silently dropped
    state = {k: v.clone() for k, v in ref.state_dict().items()}
    state["vision_model.encoder.layers.3.mlp.fc1.bias"] = torch.zeros(64)
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"not in the key map: vision_model\.encoder\.layers\.3\.mlp\.fc1"):
        load_clip_vision(tmp_path)
    del state["vision_model.encoder.layers.3.mlp.fc1.bias"], state["vision_model.encoder.layers.1.mlp.fc2.weight"]
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"missing: blocks\.1\.mlp\.fc2\.weight"):
        load_clip_vision(tmp_path)


def test_load_bare_clip_vision_model_folder(tmp_path):
    """transformers 5 saves CLIPVisionModel without the `vision_model.` prefix; both layouts load."""
    cfg = CLIP_PRESETS["tiny"]
    ref = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**config_to_transformers(cfg)))
    randomize_(ref.eval(), 3)
    ref.save_pretrained(str(tmp_path))
    pixels = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        want = penultimate(ref, pixels)
        got = load_clip_vision(tmp_path, dtype=torch.float32)(pixels)
    assert rel_err(got, want) <= TOL


def test_vit_h_preset_covers_transformers_on_meta():
    """Every key of CLIPVisionModelWithProjection at the released config maps to ours with the same shape,
    except exactly the last block, post_layernorm and visual_projection, which the key map declares dropped."""
    released = {
        "architectures": ["CLIPVisionModelWithProjection"], "attention_dropout": 0.0, "dropout": 0.0,
        "hidden_act": "gelu", "hidden_size": 1280, "image_size": 224, "initializer_factor": 1.0,
        "initializer_range": 0.02, "intermediate_size": 5120, "layer_norm_eps": 1e-05,
        "model_type": "clip_vision_model", "num_attention_heads": 16, "num_channels": 3, "num_hidden_layers": 32,
        "patch_size": 14, "projection_dim": 1024, "torch_dtype": "bfloat16",
    }  # fmt: skip
    cfg = config_from_transformers(released)
    assert cfg == CLIP_PRESETS["vit_h_14"] and cfg.num_tokens == 257
    with torch.device("meta"):
        ref = transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(**released))
        ours = CLIPVisionTower(cfg)
    keymap = transformers_to_ours(cfg.num_layers)
    state = ref.state_dict()
    converted = keymap.convert(state)
    shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in converted.items()} == shapes
    dropped = sorted(k for k in state if keymap.map_key(k) is None)
    assert dropped == sorted(
        [k for k in state if k.startswith("vision_model.encoder.layers.31.")]
        + ["vision_model.post_layernorm.bias", "vision_model.post_layernorm.weight", "visual_projection.weight"]
    )
    n_ref = sum(p.numel() for p in ref.parameters())
    n_dropped = sum(state[k].numel() for k in dropped)
    assert sum(p.numel() for p in ours.parameters()) == n_ref - n_dropped
    assert 0.62e9 < n_ref < 0.64e9  # ViT-H/14 vision tower + projection: 632M parameters


def test_bad_pixels_are_clear_errors():
    tower = CLIPVisionTower(CLIP_PRESETS["tiny"])
    with pytest.raises(ValueError, match=r"pixels must be \(B, 3, 28, 28\)"):
        tower(torch.zeros(1, 3, 32, 28))
    with pytest.raises(ValueError, match="float"):
        tower(torch.zeros(1, 3, 28, 28, dtype=torch.uint8))
    with pytest.raises(ValueError, match="multiple of patch_size"):
        CLIPVisionConfig(image_size=225)
    with pytest.raises(ValueError, match="hidden_act"):
        config_from_transformers({"hidden_act": "relu"})
