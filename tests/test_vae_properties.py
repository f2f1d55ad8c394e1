"""Properties of the causal VAE (tiny config, random weights): streaming in any chunks equals running each layer
on the whole clip, outputs are causal in time (by perturbation and by gradients), clip lengths, input checks."""

from __future__ import annotations

import pytest
import torch

from chronoedit.models.precision import cast_params
from chronoedit.models.vae import VAE_PRESETS, CausalCache, VAETiling, WanVAE
from chronoedit.models.vae.stream import run_depth_first, run_layer_by_layer
from tests.helpers import randomize_, rel_err

STREAM_TOL = 1e-6  # same arithmetic in another order (conv batching): rounding only


@pytest.fixture(scope="module")
def vae() -> WanVAE:
    model = WanVAE(VAE_PRESETS["tiny"])
    return randomize_(model, seed=5).eval()


def video(frames: int, h: int = 16, w: int = 24, seed: int = 1) -> torch.Tensor:
    return torch.rand(1, 3, frames, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def latents(t: int, h: int = 2, w: int = 3, seed: int = 2) -> torch.Tensor:
    return torch.randn(1, 16, t, h, w, generator=torch.Generator().manual_seed(seed))


def whole_clip_encode(vae: WanVAE, x: torch.Tensor) -> torch.Tensor:
    """Every encoder layer applied to all frames at once, then the quant conv."""
    return vae.conv1(run_layer_by_layer(vae.encoder.layers(), x, CausalCache()))


def whole_clip_decode(vae: WanVAE, z: torch.Tensor) -> torch.Tensor:
    return run_layer_by_layer(vae.decoder.layers(), vae.conv2(z), CausalCache())


@torch.no_grad()
def test_encode_in_any_chunks_equals_the_whole_clip(vae):
    x = video(13)
    want = whole_clip_encode(vae, x)
    assert want.shape == (1, 32, 4, 2, 3)
    assert rel_err(vae.encode_moments(x), want) <= STREAM_TOL  # chunks 1, 4, 4, 4
    assert rel_err(vae.encode_step(x)[0], want) <= STREAM_TOL  # one step
    # arbitrary chunks: latent k ≥ 1 completes with video frame 4k
    cache, pieces, counts = CausalCache(), [], []
    start = 0
    for n in (1, 1, 2, 3, 2, 4):
        out, cache = vae.encode_step(x[:, :, start : start + n], cache)
        start += n
        pieces.append(out)
        counts.append(out.shape[2])
    assert counts == [1, 0, 0, 1, 1, 1] and cache.frames == 13
    assert rel_err(torch.cat(pieces, dim=2), want) <= STREAM_TOL


@torch.no_grad()
def test_decode_in_any_chunks_equals_the_whole_clip(vae):
    z = latents(4, 3, 2)  # 24 × 16 pixels
    want = whole_clip_decode(vae, z)
    assert want.shape == (1, 3, 13, 24, 16)
    assert rel_err(vae.decode_step(z)[0], want) <= STREAM_TOL
    for chunks in ((1, 1, 1, 1), (2, 1, 1), (1, 3)):
        cache, pieces, start = CausalCache(), [], 0
        for n in chunks:
            out, cache = vae.decode_step(z[:, :, start : start + n], cache)
            assert out.shape[2] == (4 * n - 3 if start == 0 else 4 * n)
            start += n
            pieces.append(out)
        assert rel_err(torch.cat(pieces, dim=2), want) <= STREAM_TOL, chunks
    # the whole-clip decode (16-row strips over buffered frames) is the same, clamped
    assert rel_err(vae.decode_raw(z, VAETiling(strip_rows=16)), want.clamp(-1, 1)) <= STREAM_TOL


@torch.no_grad()
def test_cache_is_an_explicit_snapshot_able_state(vae):
    x = video(9)
    _, cache = vae.encode_step(x[:, :, :1])
    saved = cache.copy()
    first, cache = vae.encode_step(x[:, :, 1:5], cache)  # updates `cache` in place and returns it
    assert saved.frames == 1 and cache.frames == 5
    assert any(saved.tails[k] is not cache.tails[k] for k in saved.tails)  # the snapshot kept the old tails
    again, _ = vae.encode_step(x[:, :, 1:5], saved)  # replay from the snapshot
    assert torch.equal(first, again)
    with pytest.raises(ValueError, match="does not continue the stream"):
        vae.encode_step(video(4, h=24), cache)


@torch.no_grad()
def test_encode_is_causal(vae):
    x = video(9)
    base = vae.encode_moments(x)
    later = x.clone()
    later[:, :, 5:] = torch.rand_like(later[:, :, 5:])  # frames of latent 2 only
    out = vae.encode_moments(later)
    assert torch.equal(out[:, :, :2], base[:, :, :2])
    assert not torch.allclose(out[:, :, 2], base[:, :, 2])


@torch.no_grad()
def test_decode_is_causal(vae):
    z = latents(3)
    base = vae.decode_raw(z)
    later = z.clone()
    later[:, :, 2] += 1.0
    out = vae.decode_raw(later)
    assert torch.equal(out[:, :, :5], base[:, :, :5])  # frames of latents 0 and 1
    assert not torch.allclose(out[:, :, 5:], base[:, :, 5:])


def test_causality_by_gradients(vae):
    x = video(9).requires_grad_()
    vae.encode_moments(x)[:, :, 1].square().sum().backward()  # latent 1 <- video frames 0..4
    per_frame = x.grad.abs().sum(dim=(0, 1, 3, 4))
    assert (per_frame[:5] > 0).all() and (per_frame[5:] == 0).all(), per_frame

    z = latents(3).requires_grad_()
    vae.decode_raw(z)[:, :, 4].square().sum().backward()  # video frame 4 <- latents 0, 1
    per_latent = z.grad.abs().sum(dim=(0, 1, 3, 4))
    assert (per_latent[:2] > 0).all() and per_latent[2] == 0, per_latent


@pytest.mark.parametrize("frames", [1, 5, 17])
def test_one_frame_and_4k_plus_1_clips(vae, frames):
    with torch.no_grad():
        z = vae.encode(video(frames, 8, 8))
        assert z.shape == (1, 16, (frames - 1) // 4 + 1, 1, 1)
        out = vae.decode(z)
    assert out.shape == (1, 3, frames, 8, 8)
    assert out.abs().max() <= 1.0


@pytest.mark.parametrize("frames", [2, 3, 4, 6, 8])
def test_frame_counts_other_than_4k_plus_1_are_rejected(vae, frames):
    huge = torch.zeros(1, 3, 1, 1, 1).expand(1, 3, frames, 4096, 4096)  # no memory: fails before compute
    with pytest.raises(ValueError, match=rf"4k \+ 1 frames, got {frames}"):
        vae.encode(huge)


@pytest.mark.parametrize(
    "shape,match",
    [
        ((1, 3, 5, 20, 16), "multiples of 8"),
        ((1, 4, 5, 16, 16), r"\(B, 3, F, H, W\)"),
        ((3, 5, 16, 16), r"\(B, 3, F, H, W\)"),
    ],
)
def test_bad_videos_are_rejected(vae, shape, match):
    with pytest.raises(ValueError, match=match):
        vae.encode(torch.zeros(shape))


def test_bad_latents_are_rejected(vae):
    with pytest.raises(ValueError, match="z_dim=16"):
        vae.decode(torch.zeros(1, 8, 2, 4, 4))
    with pytest.raises(ValueError, match="z_dim=16"):
        vae.decode(torch.zeros(1, 16, 0, 4, 4))


@torch.no_grad()
def test_bf16_model_runs_with_fp32_norms(vae):
    """A bf16 copy agrees with fp32 to bf16 accuracy; norms and the upsampling phase kernels run in fp32."""
    x, z = video(5), latents(2)
    want_z, want_x = vae.encode(x), vae.decode_raw(z)
    low = WanVAE(vae.cfg)
    low.load_state_dict(vae.state_dict())
    cast_params(low.eval(), torch.bfloat16, WanVAE.keep_fp32)
    assert low.decoder.head[0].gamma.dtype == torch.float32 and low.decoder.head[2].weight.dtype == torch.bfloat16
    got_z, got_x = low.encode(x), low.decode_raw(z)
    assert got_z.dtype == got_x.dtype == torch.bfloat16
    assert torch.isfinite(got_z).all() and torch.isfinite(got_x).all()
    assert rel_err(got_z, want_z) < 5e-2, rel_err(got_z, want_z)
    assert rel_err(got_x, want_x) < 5e-2, rel_err(got_x, want_x)


@torch.no_grad()
def test_memory_layout_does_not_change_results(vae):
    """Large frames run channels-last, small ones in the standard layout: the layers give the same numbers."""
    z, x = latents(2, 3, 2), video(5)
    for layers, inp in ((vae.decoder.layers(), vae.conv2(z)), (vae.encoder.layers(), x)):
        plain = torch.cat(run_depth_first(layers, inp.contiguous(), CausalCache()), dim=2)
        last = torch.cat(
            run_depth_first(layers, inp.contiguous(memory_format=torch.channels_last_3d), CausalCache()), 2
        )
        assert rel_err(last, plain) <= STREAM_TOL
