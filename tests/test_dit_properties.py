"""Property tests of the DiT: RoPE geometry, the temporal skip rule, input validation."""

from __future__ import annotations

import pytest
import torch

from chronoedit.models.dit import DIT_PRESETS, ChronoEditDiT, DiTConfig, temporal_positions
from chronoedit.models.dit.rope import rope_3d
from chronoedit.ops.rope import apply_rope, rope_angles, rope_frequencies, rope_table


def test_skip_rule_maps_two_frames_to_first_and_last_reasoning_position():
    assert temporal_positions(2, 8) == [0, 7]
    assert temporal_positions(2, 5) == [0, 4]
    assert temporal_positions(8, 8) == list(range(8))
    assert temporal_positions(1, 8) == [0]
    assert temporal_positions(3, 8) == [0, 1, 2]


def test_rope_table_for_two_frames_equals_frames_0_and_7_of_an_8_frame_table():
    axes = DiTConfig(dim=128, num_heads=1).rope_axes_dims
    two = rope_3d((2, 3, 4), axes, 10000.0, 8)
    eight = rope_3d((8, 3, 4), axes, 10000.0, 8)
    per_frame = 3 * 4
    pick = torch.cat([torch.arange(per_frame), 7 * per_frame + torch.arange(per_frame)])
    assert torch.equal(two, eight[pick])
    assert not torch.equal(two, eight[: 2 * per_frame])


def test_head_dim_split_follows_wan():
    assert DiTConfig(dim=128, num_heads=1).rope_axes_dims == (44, 42, 42)
    assert DiTConfig(dim=64, num_heads=1).rope_axes_dims == (24, 20, 20)  # d − 4⌊d/6⌋, 2⌊d/6⌋, 2⌊d/6⌋
    assert sum(DiTConfig(dim=40, num_heads=1).rope_axes_dims) == 40


def test_rope_scores_depend_only_on_relative_position():
    """⟨R(p)q, R(p')k⟩ is a function of p − p' alone: shift both positions, same score."""
    g = torch.Generator().manual_seed(0)
    d = 16
    q, k = torch.randn(1, 1, 1, d, generator=g), torch.randn(1, 1, 1, d, generator=g)
    inv = rope_frequencies(d)

    def score(p_q: int, p_k: int) -> float:
        rq = apply_rope(q, rope_table(rope_angles(torch.tensor([p_q]), inv)))
        rk = apply_rope(k, rope_table(rope_angles(torch.tensor([p_k]), inv)))
        return (rq * rk).sum().item()

    for delta in (0, 1, 5, 37):
        base = score(3 + delta, 3)
        for shift in (0, 11, 250, 900):
            assert score(3 + delta + shift, 3 + shift) == pytest.approx(base, rel=1e-5, abs=1e-5)
    assert score(10, 3) != pytest.approx(score(3, 3), rel=1e-3)  # and it does depend on the offset


def test_rope_rotates_each_interleaved_pair():
    """Pair (x[2i], x[2i+1]) rotates by angle pos·θ^(−2i/D): check against an explicit 2×2 rotation."""
    x = torch.randn(1, 3, 1, 8, dtype=torch.float64).float()
    ang = rope_angles(torch.arange(3), rope_frequencies(8))  # (3, 4)
    y = apply_rope(x, rope_table(ang))
    for pos in range(3):
        for i in range(4):
            c, s = ang[pos, i].cos().item(), ang[pos, i].sin().item()
            x0, x1 = x[0, pos, 0, 2 * i].item(), x[0, pos, 0, 2 * i + 1].item()
            assert y[0, pos, 0, 2 * i].item() == pytest.approx(x0 * c - x1 * s, abs=1e-6)
            assert y[0, pos, 0, 2 * i + 1].item() == pytest.approx(x0 * s + x1 * c, abs=1e-6)


def test_rope_preserves_norm_and_is_identity_at_zero():
    x = torch.randn(2, 5, 3, 12)
    y = apply_rope(x, rope_table(rope_angles(torch.arange(5), rope_frequencies(12))))
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(y[:, 0], x[:, 0])


@pytest.fixture(scope="module")
def tiny():
    return ChronoEditDiT(DIT_PRESETS["tiny"]).eval()


def _args(cfg, b=1, c=None, f=2, h=4, w=4, lt=7, li=257):
    return (
        torch.zeros(b, c or cfg.in_channels, f, h, w),
        torch.tensor([500.0] * b),
        torch.zeros(b, lt, cfg.text_dim),
        torch.zeros(b, li, cfg.image_dim),
    )


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(h=5), "latent height 5 is not divisible by the patch size 2"),
        (dict(w=7), "latent width 7 is not divisible by the patch size 2"),
        (dict(c=16), "x has 16 channels, the model takes in_channels=36"),
        (dict(lt=600), "context has 600 tokens, more than text_len=512"),
    ],
)
def test_bad_shapes_raise_before_compute(tiny, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny(*_args(tiny.cfg, **kwargs))


def test_too_many_positions_raise(tiny):
    small = ChronoEditDiT(DIT_PRESETS["tiny"].replace(rope_max_seq_len=8)).eval()
    with pytest.raises(ValueError, match="latent frame positions exceed rope_max_seq_len=8"):
        small(*_args(small.cfg, f=9))
    with pytest.raises(ValueError, match="latent row positions exceed rope_max_seq_len=8"):
        small(*_args(small.cfg, h=18))
    small(*_args(small.cfg, f=2, h=16, w=16))  # 2 frames use positions {0, 7}: still fits


def test_wrong_context_and_image_tokens_raise(tiny):
    x, t, ctx, img = _args(tiny.cfg)
    with pytest.raises(ValueError, match="context must be"):
        tiny(x, t, torch.zeros(1, 7, 5), img)
    with pytest.raises(ValueError, match="the model needs clip_tokens"):
        tiny(x, t, ctx, None)
    with pytest.raises(ValueError, match="clip_tokens must be"):
        tiny(x, t, ctx, torch.zeros(1, 257, 3))
    with pytest.raises(ValueError, match="timestep must be"):
        tiny(x, torch.zeros(3), ctx, img)


def test_invalid_configs_raise():
    with pytest.raises(ValueError, match="dim=100 must be a positive multiple of num_heads=3"):
        DiTConfig(dim=100, num_heads=3)
    with pytest.raises(ValueError, match="rope_temporal_skip_len=0"):
        DiTConfig(rope_temporal_skip_len=0)
    with pytest.raises(ValueError, match="unknown attention backend 'nope'"):
        from chronoedit.parallelize import apply_attention

        apply_attention(ChronoEditDiT(DIT_PRESETS["tiny"]), "nope")
    with pytest.raises(ValueError, match=r"model\.dit\.block='nope' is not a registered DiT block"):
        ChronoEditDiT(DIT_PRESETS["tiny"].replace(block="nope"))


def test_attention_backends_agree(tiny):
    """The explicit-softmax backend computes the same function as SDPA (a new kernel can be checked this way)."""
    x, t, ctx, img = (torch.randn_like(a) if a.is_floating_point() else a for a in _args(tiny.cfg, f=2, h=4, w=6))
    t = torch.tensor([300.0])
    from chronoedit.parallelize import apply_attention

    other = apply_attention(ChronoEditDiT(tiny.cfg), "math").eval()
    other.load_state_dict(tiny.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(other(x, t, ctx, img), tiny(x, t, ctx, img), rtol=1e-5, atol=1e-5)


def test_activation_checkpointing_selects_blocks(tiny):
    from chronoedit.parallelize import CheckpointedBlock, apply_activation_checkpointing

    m = ChronoEditDiT(DIT_PRESETS["tiny"])
    names = [n for n, _ in m.named_parameters()]
    torch.manual_seed(0)
    x, _, ctx, img = (torch.randn_like(a) for a in _args(m.cfg, f=2, h=4, w=4))
    t = torch.tensor([300.0])
    x.requires_grad_(True)
    m(x, t, ctx, img).square().sum().backward()
    want = x.grad.clone()
    apply_activation_checkpointing(m, blocks=[1])
    assert [isinstance(b, CheckpointedBlock) for b in m.blocks] == [False, True]
    apply_activation_checkpointing(m, blocks=True)
    assert all(isinstance(b, CheckpointedBlock) for b in m.blocks)
    assert [n for n, _ in m.named_parameters()] == names  # names (and so state dicts, FSDP, LoRA) unchanged
    x.grad = None
    m(x, t, ctx, img).square().sum().backward()  # recomputed in backward: the same gradients
    torch.testing.assert_close(x.grad, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"block indices \[5\] out of range"):
        apply_activation_checkpointing(m, blocks=[5])
