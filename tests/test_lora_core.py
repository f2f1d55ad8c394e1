"""LoRA core: fused == runtime adapters == the explicit formula; unfuse is bit-exact; new adapters start at 0."""

from __future__ import annotations

import pytest
import torch

from chronoedit.checkpoint.errors import CheckpointError
from chronoedit.lora import LoRALinear, LoRAWeights, add_adapter, fuse_lora, lora_parameters, remove_adapters
from chronoedit.models.dit import DIT_PRESETS, ChronoEditDiT
from tests.helpers import rel_err


def _model():
    m = ChronoEditDiT(DIT_PRESETS["tiny"]).eval()
    m.init_weights(torch.Generator().manual_seed(0))
    return m


def _inputs(cfg):
    g = torch.Generator().manual_seed(1)
    return (
        torch.randn(1, cfg.in_channels, 2, 4, 6, generator=g),
        torch.tensor([400.0]),
        torch.randn(1, 9, cfg.text_dim, generator=g),
        torch.randn(1, 257, cfg.image_dim, generator=g),
    )


def _random_lora(model, rank=4, seed=0, with_bias=False):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name in ("blocks.0.self_attn.q", "blocks.1.ffn.0", "blocks.1.cross_attn.k_img", "head.head"):
        lin = model.get_submodule(name)
        out[name] = LoRAWeights(
            down=torch.randn(rank, lin.in_features, generator=g) * 0.1,
            up=torch.randn(lin.out_features, rank, generator=g) * 0.1,
            alpha=2.0,
            bias=torch.randn(lin.out_features, generator=g) * 0.1 if with_bias else None,
        )
    return out


def test_fuse_matches_formula_and_unfuse_is_bit_exact():
    m = _model()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    l1, l2 = _random_lora(m, seed=1, with_bias=True), _random_lora(m, rank=2, seed=2)
    handle = fuse_lora(m, [(l1, 0.7), (l2, -1.3)])
    q = "blocks.0.self_attn.q"
    want = before[f"{q}.weight"] + 0.7 * (2.0 / 4) * l1[q].up @ l1[q].down + -1.3 * (2.0 / 2) * l2[q].up @ l2[q].down
    torch.testing.assert_close(m.state_dict()[f"{q}.weight"], want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(m.state_dict()[f"{q}.bias"], before[f"{q}.bias"] + 0.7 * l1[q].bias)
    assert not torch.equal(m.state_dict()["head.head.weight"], before["head.head.weight"])
    handle.unfuse()
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_unfuse_is_bit_exact_in_bf16():
    m = _model().to(torch.bfloat16)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    fuse_lora(m, [(_random_lora(m), 1.0)]).unfuse()
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())


def test_runtime_adapters_equal_fused_weights():
    m = _model()
    x = _inputs(m.cfg)
    l1, l2 = _random_lora(m, seed=1, with_bias=True), _random_lora(m, rank=2, seed=2)
    with torch.no_grad():
        base = m(*x)
        add_adapter(m, l1, name="a", strength=0.7)
        add_adapter(m, l2, name="b", strength=-1.3)
        runtime = m(*x)
        assert isinstance(m.blocks[0].self_attn.q, LoRALinear)
        assert "blocks.0.self_attn.q.weight" in m.state_dict()  # base names unchanged
        remove_adapters(m)
        assert type(m.blocks[0].self_attn.q) is torch.nn.Linear
        torch.testing.assert_close(m(*x), base)
        handle = fuse_lora(m, [(l1, 0.7), (l2, -1.3)])
        fused = m(*x)
        handle.unfuse()
    assert rel_err(runtime, fused) < 1e-5
    assert rel_err(runtime, base) > 1e-3  # the LoRA does something


def test_new_adapter_starts_at_zero_and_trains_only_lora():
    m = _model()
    x = _inputs(m.cfg)
    with torch.no_grad():
        base = m(*x)
    targets = [f"blocks.{i}.self_attn.{p}" for i in range(2) for p in "qkvo"]
    add_adapter(m, targets, rank=4, alpha=8.0, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(m(*x), base)
    exported = lora_parameters(m)
    assert set(exported) == set(targets) and exported[targets[0]].scale == 2.0
    lora = [p for n, p in m.named_parameters() if "lora_" in n]
    assert len(lora) == 16 and all(p.requires_grad for p in lora)


def test_bad_targets_are_named():
    m = _model()
    bad = {"blocks.9.self_attn.q": LoRAWeights(down=torch.zeros(2, 64), up=torch.zeros(64, 2))}
    with pytest.raises(CheckpointError, match=r"targets not in the model: blocks\.9\.self_attn\.q"):
        fuse_lora(m, [(bad, 1.0)])
    wrong = {"blocks.0.self_attn.q": LoRAWeights(down=torch.zeros(2, 65), up=torch.zeros(64, 2))}
    with pytest.raises(CheckpointError, match="misshaped"):
        fuse_lora(m, [(wrong, 1.0)])
