"""Parity of our DiT with diffusers' ChronoEditTransformer3DModel (fp32, relative error ≤ 1e-5).

Weights are random (every parameter, norms and biases included), copied from the diffusers model through our
declarative key map and strictly loaded; the same inputs go through both models.
"""

from __future__ import annotations

import pytest
import torch

from chronoedit.checkpoint.keymaps.dit import DIFFUSERS_TO_OURS, config_from_diffusers, config_to_diffusers
from chronoedit.checkpoint.load import load_into
from chronoedit.models.dit import DIT_PRESETS, ChronoEditDiT, DiTConfig
from chronoedit.models.precision import cast_params
from tests.helpers import randomize_, rel_err

diffusers = pytest.importorskip("diffusers")

TOL = 1e-5  # fp32 relative error, ‖ours − ref‖ / ‖ref‖


def small_config(heads: int, head_dim: int, layers: int = 2) -> DiTConfig:
    dim = heads * head_dim
    return DiTConfig(
        dim=dim, num_heads=heads, num_layers=layers, ffn_dim=2 * dim, in_channels=36, out_channels=16,
        text_dim=24, image_dim=20, freq_dim=16,
    )  # fmt: skip


def make_pair(cfg: DiTConfig, seed: int = 0):
    ref = diffusers.ChronoEditTransformer3DModel(**config_to_diffusers(cfg)).eval()
    randomize_(ref, seed)
    with torch.device("meta"):
        ours = ChronoEditDiT(config_from_diffusers(dict(ref.config)))
    load_into(ours, DIFFUSERS_TO_OURS.convert(ref.state_dict()), what="diffusers DiT")
    return ours.eval(), ref


def inputs(cfg: DiTConfig, batch: int, frames: int, h: int, w: int, text_tokens: int = 37, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg.in_channels, frames, h, w, generator=g)
    t = torch.tensor([999.0, 321.0, 7.0][:batch])
    text = torch.randn(batch, text_tokens, cfg.text_dim, generator=g)
    clip = torch.randn(batch, 257, cfg.image_dim, generator=g)
    return x, t, text, clip


def run_ref(ref, x, t, text, clip):
    padded = torch.nn.functional.pad(text, (0, 0, 0, 512 - text.shape[1]))  # diffusers needs exactly 512
    return ref(x, t, padded, clip, return_dict=False)[0]


@pytest.mark.parametrize(
    "heads,head_dim,batch,frames,h,w",
    [
        (2, 12, 1, 2, 6, 10),  # 2 latent frames: the temporal skip {0, 7}
        (2, 12, 2, 8, 4, 6),  # 8 latent frames: reasoning, positions 0..7
        (4, 8, 2, 2, 10, 4),  # tall latents, batch 2 with different timesteps
        (1, 32, 1, 3, 4, 4),  # another frame count, head dim 32
        (2, 20, 2, 1, 6, 8),  # a single frame, head dim 20
    ],
)
def test_forward_matches_diffusers(heads, head_dim, batch, frames, h, w):
    cfg = small_config(heads, head_dim)
    ours, ref = make_pair(cfg)
    x, t, text, clip = inputs(cfg, batch, frames, h, w)
    with torch.no_grad():
        want = run_ref(ref, x, t, text, clip)
        got = ours(x, t, text, clip)
    assert got.shape == want.shape == (batch, 16, frames, h, w)
    err = rel_err(got, want)
    assert err <= TOL, f"relative error {err:.2e} > {TOL}"


def test_text_padding_inside_equals_padding_outside():
    """Context shorter than 512 is zero-padded inside the model (its padding row embedded and projected once),
    giving what the explicitly padded 512-token context gives (which embeds and projects every row)."""
    cfg = small_config(2, 12)
    ours, _ = make_pair(cfg)
    x, t, text, clip = inputs(cfg, 2, 2, 4, 4)
    padded = torch.nn.functional.pad(text, (0, 0, 0, 512 - text.shape[1]))
    with torch.no_grad():
        assert rel_err(ours(x, t, text, clip), ours(x, t, padded, clip)) < 1e-6


def test_prompts_of_different_lengths_match_diffusers():
    """A batch of two prompts (37 and 5 tokens): ``context_lens`` marks the rest of each as zero padding."""
    cfg = small_config(2, 12)
    ours, ref = make_pair(cfg)
    x, t, text, clip = inputs(cfg, 2, 2, 4, 6)
    lens = torch.tensor([37, 5])
    padded = text.clone()
    padded[1, 5:] = 0  # what the pipeline hands diffusers: zeros after each prompt
    with torch.no_grad():
        want = run_ref(ref, x, t, padded, clip)
        got = ours(x, t, text, clip, context_lens=lens)  # rows past each length are ignored, not read
    assert rel_err(got, want) <= TOL
    with pytest.raises(ValueError, match="context_lens must be"):
        ours(x, t, text, clip, context_lens=torch.tensor([38, 5]))


def test_gradients_match_diffusers():
    """Backward parity: gradients w.r.t. the input and a block weight (activation checkpointing on in ours)."""
    cfg = small_config(2, 12)
    ours, ref = make_pair(cfg)
    from chronoedit.parallelize import apply_activation_checkpointing

    apply_activation_checkpointing(ours, blocks=[1])
    x, t, text, clip = inputs(cfg, 1, 2, 4, 6)
    xo, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours(xo, t, text, clip).square().mean().backward()
    run_ref(ref, xr, t, text, clip).square().mean().backward()
    assert rel_err(xo.grad, xr.grad) <= TOL
    assert rel_err(ours.blocks[0].ffn[0].weight.grad, ref.blocks[0].ffn.net[0].proj.weight.grad) <= TOL
    assert rel_err(ours.blocks[1].self_attn.q.weight.grad, ref.blocks[1].attn1.to_q.weight.grad) <= TOL


def test_bf16_agrees_with_fp32_and_keeps_fp32_islands():
    cfg = small_config(2, 16)
    ours, _ = make_pair(cfg)
    x, t, text, clip = inputs(cfg, 2, 2, 4, 6)
    with torch.no_grad():
        want = ours(x, t, text, clip)
        cast_params(ours, torch.bfloat16, ChronoEditDiT.keep_fp32)
        got = ours(x, t, text, clip)
    # islands: time embedding, modulation tables and norm weights stay fp32; everything else is bf16
    dtypes = {n: p.dtype for n, p in ours.named_parameters()}
    assert dtypes["time_embedding.0.weight"] == dtypes["time_projection.1.weight"] == torch.float32
    assert dtypes["blocks.0.modulation"] == dtypes["head.modulation"] == torch.float32
    assert dtypes["blocks.0.norm3.weight"] == dtypes["blocks.0.self_attn.norm_q.weight"] == torch.float32
    assert dtypes["blocks.0.self_attn.q.weight"] == dtypes["head.head.weight"] == torch.bfloat16
    assert got.dtype == torch.bfloat16 and torch.isfinite(got).all()
    err = rel_err(got, want)
    assert err < 3e-2, f"bf16 vs fp32 relative error {err:.2e}"
    # the time embedding and modulation are computed in fp32 even in a bf16 model
    e, e0 = ours.embed_time(t[:2])
    assert e.dtype == e0.dtype == torch.float32


def test_14b_preset_matches_diffusers_keys_and_shapes_on_meta():
    cfg = DIT_PRESETS["chronoedit_14b"]
    with torch.device("meta"):
        ref = diffusers.ChronoEditTransformer3DModel(**config_to_diffusers(cfg))
        ours = ChronoEditDiT(cfg)
    ref_shapes = {k: tuple(v.shape) for k, v in DIFFUSERS_TO_OURS.convert(ref.state_dict()).items()}
    our_shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert ref_shapes == our_shapes
    n_ours = sum(p.numel() for p in ours.parameters())
    assert n_ours == sum(p.numel() for p in ref.parameters())
    assert 16.3e9 < n_ours < 16.5e9  # the "14B" I2V model has 16.4B parameters
    # and the released config.json maps to our preset
    released = {
        "_class_name": "WanTransformer3DModel", "added_kv_proj_dim": 5120, "attention_head_dim": 128,
        "cross_attn_norm": True, "eps": 1e-06, "ffn_dim": 13824, "freq_dim": 256, "image_dim": 1280,
        "in_channels": 36, "num_attention_heads": 40, "num_layers": 40, "out_channels": 16,
        "patch_size": [1, 2, 2], "qk_norm": "rms_norm_across_heads", "rope_max_seq_len": 1024, "text_dim": 4096,
    }  # fmt: skip
    assert config_from_diffusers(released) == cfg
