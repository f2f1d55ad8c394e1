"""Parity of our Wan 2.1 VAE with diffusers' AutoencoderKLWan (fp32, relative error ≤ 1e-5).

Weights are random (every parameter, norm gammas and biases included), copied from the diffusers model through
our declarative key map and strictly loaded; the same inputs go through both models. The reference runs its own
chunked schedule (encode 1, 4, 4, … frames; decode one latent at a time); ours runs depth first, frame by frame,
and optionally in row strips.
"""

from __future__ import annotations

import pytest
import torch

from chronoedit.checkpoint.keymaps.vae import config_from_diffusers, config_to_diffusers, diffusers_to_ours
from chronoedit.checkpoint.load import load_into
from chronoedit.models.vae import VAE_PRESETS, VAEConfig, VAETiling, WanVAE
from tests.helpers import randomize_, rel_err

diffusers = pytest.importorskip("diffusers")

TOL = 1e-5  # fp32 relative error, ‖ours − ref‖ / ‖ref‖


def make_pair(cfg: VAEConfig, seed: int = 0) -> tuple[WanVAE, torch.nn.Module]:
    ref = diffusers.AutoencoderKLWan(**config_to_diffusers(cfg)).eval()
    randomize_(ref, seed)
    with torch.device("meta"):
        ours = WanVAE(config_from_diffusers(dict(ref.config)))
    load_into(ours, diffusers_to_ours(cfg).convert(ref.state_dict()), what="diffusers VAE")
    return ours.eval(), ref


def video(batch: int, frames: int, h: int, w: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, frames, h, w, generator=g) * 2 - 1


def latents(batch: int, t: int, h: int, w: int, seed: int = 2) -> torch.Tensor:
    return torch.randn(batch, 16, t, h, w, generator=torch.Generator().manual_seed(seed))


def pipeline_stats(ref) -> tuple[torch.Tensor, torch.Tensor]:
    """latents_mean and 1/latents_std exactly as diffusers' ChronoEdit pipeline builds them."""
    mean = torch.tensor(ref.config.latents_mean).view(1, ref.config.z_dim, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(ref.config.latents_std).view(1, ref.config.z_dim, 1, 1, 1)
    return mean, inv_std


@pytest.fixture(scope="module")
def tiny_pair():
    return make_pair(VAE_PRESETS["tiny"])


@pytest.mark.parametrize(
    "batch,frames,h,w",
    [
        (1, 1, 16, 16),  # a single frame (an image)
        (2, 5, 32, 48),  # batch 2, one chunk of 4 after the first frame, non-square
        (1, 9, 24, 16),  # two chunks, odd latent size 3×2
        (1, 13, 16, 16),  # three chunks
    ],
)
def test_encode_matches_diffusers(tiny_pair, batch, frames, h, w):
    ours, ref = tiny_pair
    x = video(batch, frames, h, w)
    with torch.no_grad():
        want = ref.encode(x).latent_dist.parameters  # (B, 2·z, T, h, w): mean, log-variance
        got = ours.encode_moments(x)
    assert got.shape == want.shape == (batch, 32, (frames - 1) // 4 + 1, h // 8, w // 8)
    err = rel_err(got, want)
    assert err <= TOL, f"relative error {err:.2e} > {TOL}"


@pytest.mark.parametrize("batch,t,h,w", [(1, 1, 2, 2), (2, 2, 4, 6), (1, 3, 3, 2), (1, 4, 2, 2)])
def test_decode_matches_diffusers(tiny_pair, batch, t, h, w):
    ours, ref = tiny_pair
    z = latents(batch, t, h, w)
    with torch.no_grad():
        want = ref.decode(z).sample
        got = ours.decode_raw(z)
    assert got.shape == want.shape == (batch, 3, 4 * (t - 1) + 1, 8 * h, 8 * w)
    err = rel_err(got, want)
    assert err <= TOL, f"relative error {err:.2e} > {TOL}"


def test_row_strips_match_diffusers():
    """Strips of 16 output rows (8 rows at the strip stages, with 10 halo rows) still give the reference."""
    ours, ref = make_pair(VAE_PRESETS["tiny"], seed=3)
    z = latents(1, 3, 7, 3)  # 56 output rows: 4 strips, the last one short
    with torch.no_grad():
        want = ref.decode(z).sample
        got = ours.decode_raw(z, VAETiling(strip_rows=16))
        whole = ours.decode_raw(z, VAETiling(strip_rows=0))  # how to run is an argument of the call
    err = rel_err(got, want)
    assert err <= TOL, f"relative error {err:.2e} > {TOL}"
    assert rel_err(got, whole) <= 1e-6


def test_normalised_encode_decode_match_the_pipeline_arithmetic(tiny_pair):
    """encode() = (mean − μ)·(1/σ) and decode(z) = decode_raw(z / (1/σ) + μ), as diffusers' pipeline computes."""
    ours, ref = tiny_pair
    mean, inv_std = pipeline_stats(ref)
    x = video(1, 5, 16, 24)
    z = latents(1, 2, 2, 3)
    with torch.no_grad():
        want_z = (ref.encode(x).latent_dist.mode() - mean) * inv_std
        got_z = ours.encode(x)
        want_x = ref.decode(z / inv_std + mean).sample
        got_x = ours.decode(z)
    assert rel_err(got_z, want_z) <= TOL
    assert rel_err(got_x, want_x) <= TOL
    assert got_x.abs().max() <= 1.0
    # the arithmetic itself is bit-compatible with the pipeline's
    assert torch.equal(ours.normalize(z), (z - mean) * inv_std)
    assert torch.equal(ours.denormalize(z), z / inv_std + mean)
    zb = z.bfloat16()
    assert torch.equal(ours.normalize(zb), (zb - mean.bfloat16()) * inv_std.bfloat16())


def test_posterior_sample_matches_diffusers(tiny_pair):
    ours, ref = tiny_pair
    mean, inv_std = pipeline_stats(ref)
    x = video(2, 5, 16, 16)
    with torch.no_grad():
        want = (ref.encode(x).latent_dist.sample(generator=torch.Generator().manual_seed(7)) - mean) * inv_std
        got = ours.encode(x, sample=True, generator=torch.Generator().manual_seed(7))
        mode = ours.encode(x)
    assert rel_err(got, want) <= TOL
    assert rel_err(got, mode) > 1e-3  # the sample is not the mean


# ---------------------------------------------------------------------------------------------- real config
@pytest.fixture(scope="module")
def real_pair():
    return make_pair(VAE_PRESETS["wan21"])


@pytest.mark.parametrize("frames", [5, 9])
def test_real_config_encode_matches_diffusers(real_pair, frames):
    ours, ref = real_pair
    x = video(1, frames, 64, 64)
    with torch.no_grad():
        want = ref.encode(x).latent_dist.parameters
        got = ours.encode_moments(x)
    assert got.shape == want.shape == (1, 32, (frames - 1) // 4 + 1, 8, 8)
    err = rel_err(got, want)
    assert err <= TOL, f"relative error {err:.2e} > {TOL}"


@pytest.mark.parametrize("t", [2, 3])
def test_real_config_decode_matches_diffusers(real_pair, t):
    ours, ref = real_pair
    z = latents(1, t, 8, 8)
    with torch.no_grad():
        want = ref.decode(z).sample
        got = ours.decode_raw(z)
    assert got.shape == want.shape == (1, 3, 4 * t - 3, 64, 64)
    err = rel_err(got, want)
    assert err <= TOL, f"relative error {err:.2e} > {TOL}"


@pytest.mark.slow
def test_real_config_channels_last_path_matches_diffusers(real_pair):
    """At 128×128 the full-resolution convs go to oneDNN and we run channels-last (and 2 row strips)."""
    ours, ref = real_pair
    x, z = video(1, 5, 128, 128), latents(1, 2, 16, 16)
    with torch.no_grad():
        enc = rel_err(ours.encode_moments(x), ref.encode(x).latent_dist.parameters)
        dec = rel_err(ours.decode_raw(z, VAETiling(strip_rows=64)), ref.decode(z).sample)
    assert enc <= TOL and dec <= TOL, (enc, dec)
