"""The VAE trainer's loss weighting and crop placement (chronoedit/training/vae.py): what they promise, on
hand-made frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from chronoedit.models.vae import WanVAE
from chronoedit.models.vae.config import VAEConfig
from chronoedit.training.vae import VAETrainConfig, _object_crop, background, to_tensor, vae_loss


def scene(h: int = 32, w: int = 32, box=(20, 26, 4, 10)) -> np.ndarray:
    """(H, W, 3) uint8: a light background with one red box rows y0:y1, cols x0:x1."""
    f = np.full((h, w, 3), (230, 230, 220), np.uint8)
    y0, y1, x0, x1 = box
    f[y0:y1, x0:x1] = (220, 30, 30)
    return f


def test_background_is_the_border_median():
    assert background(scene()).tolist() == [230, 230, 220]


def test_object_crop_contains_an_object_pixel():
    frame, rng = scene(64, 64, (40, 46, 50, 56)), np.random.default_rng(0)
    for _ in range(50):
        y, x = _object_crop(frame, 16, rng, fallback=(0, 0))
        crop = frame[y : y + 16, x : x + 16]
        assert crop.shape == (16, 16, 3) and (crop == (220, 30, 30)).all(-1).any()
    flat = np.full((64, 64, 3), 200, np.uint8)
    assert _object_crop(flat, 16, rng, fallback=(3, 5)) == (3, 5)  # nothing to find: the uniform draw stands


def tiny_vae() -> WanVAE:
    cfg = VAEConfig(base_dim=4, z_dim=4, dim_mult=(1, 2), num_res_blocks=1, temporal_downsample=(True,),
                    latents_mean=(0.0,) * 4, latents_std=(1.0,) * 4)  # fmt: skip
    return WanVAE(cfg).init_weights(torch.Generator().manual_seed(0))


def test_fg_weight_zero_is_the_plain_loss_and_weights_the_object_more():
    f = scene(16, 16, (4, 10, 4, 10))
    pair = to_tensor([np.stack([f] * 5)], [False])
    vae, gen = tiny_vae(), torch.Generator().manual_seed(0)
    plain, parts = vae_loss(vae, pair, 0.0, gen)
    assert plain.item() == pytest.approx(parts["mse"] + 0.1 * parts["l1"], rel=1e-6)
    heavy, parts_w = vae_loss(vae, pair, 0.0, gen, fg_weight=10.0)
    assert parts_w == parts  # the logged terms stay unweighted
    # the weights have mean 1: the weighted loss is the plain one re-weighted towards the box's error
    with torch.no_grad():
        err = vae.decode_step(vae.encode_moments(pair).chunk(2, dim=1)[0])[0] - pair
    box = torch.zeros_like(pair[:, :1], dtype=torch.bool)
    box[..., 4:10, 4:10] = True
    w = 1 + 10 * box.float()
    w = w / w.mean()
    want = (w * err.pow(2)).mean() + 0.1 * (w * err.abs()).mean()
    assert heavy.item() == pytest.approx(want.item(), rel=1e-5)


def test_fg_weight_ignores_a_condition_videos_zero_frames():
    """A condition video's frames 1–4 are exact zeros: not "foreground", whatever the background colour."""
    f = np.full((16, 16, 3), 240, np.uint8)  # no object at all
    cond = to_tensor([np.stack([f] * 5)], [True])
    vae = tiny_vae()
    a, _ = vae_loss(vae, cond, 0.0, torch.Generator().manual_seed(0))
    b, _ = vae_loss(vae, cond, 0.0, torch.Generator().manual_seed(0), fg_weight=10.0)
    assert b.item() == pytest.approx(a.item(), rel=1e-6)  # every weight 1


@pytest.mark.parametrize("bad", [{"fg_weight": -1.0}, {"object_crops": 1.5}])
def test_vae_train_config_rejects_bad_weights(bad):
    with pytest.raises(ValueError, match="fg_weight"):
        VAETrainConfig(dataset="x", **bad)


@pytest.mark.parametrize("bad", [{"init_gain": 0.0}, {"schedule": "linear"}, {"snapshot_every": -1}])
def test_vae_train_config_rejects_bad_init_schedule_and_snapshots(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        VAETrainConfig(dataset="x", **bad)


def test_constant_schedule_holds_the_lr_after_warmup_and_cosine_decays_to_10_percent():
    from chronoedit.training.vae import _lr_factor

    const = VAETrainConfig(dataset="x", steps=1000, warmup_steps=10, schedule="constant")
    cos = VAETrainConfig(dataset="x", steps=1000, warmup_steps=10)
    assert _lr_factor(4, const) == _lr_factor(4, cos) == pytest.approx(0.5)  # the same warm-up
    assert [_lr_factor(s, const) for s in (10, 500, 1000, 5000)] == [1.0] * 4
    assert _lr_factor(10, cos) == pytest.approx(1.0) and _lr_factor(1000, cos) == pytest.approx(0.1)
