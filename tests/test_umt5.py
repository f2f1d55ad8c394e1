"""Parity of our UMT5 encoder with transformers' UMT5EncoderModel (fp32, relative error ≤ 1e-5), of
encode_prompts with diffusers' `_get_t5_prompt_embeds`, and strict lean loading of a sharded folder.

Weights are random (every parameter, norm weights included), copied through our declarative key map.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from chronoedit.checkpoint.encoders import load_text_encoder as load_umt5
from chronoedit.checkpoint.errors import CheckpointError
from chronoedit.checkpoint.keymaps.umt5 import (
    TRANSFORMERS_TO_OURS,
    config_from_shapes,
    config_from_transformers,
    config_to_transformers,
    untie_embedding,
)
from chronoedit.checkpoint.load import load_into
from chronoedit.checkpoint.safetensors_io import save_file
from chronoedit.models.precision import cast_params
from chronoedit.models.text import UMT5_PRESETS, Tokenizer, UMT5Config, UMT5Encoder, encode_prompts
from chronoedit.models.text.umt5 import relative_position_buckets
from tests.fixtures_text import make_test_tokenizer_folder
from tests.helpers import randomize_, rel_err

transformers = pytest.importorskip("transformers")

TOL = 1e-5  # fp32 relative error, ‖ours − ref‖ / ‖ref‖


def make_pair(cfg: UMT5Config, seed: int = 0):
    ref = transformers.UMT5EncoderModel(transformers.UMT5Config(**config_to_transformers(cfg))).eval()
    randomize_(ref, seed)
    with torch.device("meta"):
        ours = UMT5Encoder(config_from_transformers(ref.config.to_dict()))
    load_into(ours, TRANSFORMERS_TO_OURS.convert(ref.state_dict()), what="transformers UMT5")
    return ours.eval(), ref


def batch(vocab: int, lengths: list[int], total: int, seed: int = 1):
    """Random ids (B, total), mask with lengths[i] ones then zeros (right padding)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (len(lengths), total), generator=g)
    mask = (torch.arange(total)[None] < torch.tensor(lengths)[:, None]).long()
    return ids, mask


@pytest.mark.parametrize("buckets,max_distance", [(32, 128), (16, 20), (8, 9), (64, 300)])
def test_relative_buckets_match_transformers(buckets, max_distance):
    cfg = transformers.UMT5Config(relative_attention_num_buckets=buckets, relative_attention_max_distance=max_distance)
    attn = transformers.models.umt5.modeling_umt5.UMT5Attention(cfg, has_relative_attention_bias=True)
    n = 700
    offsets = torch.arange(n)[None, :] - torch.arange(n)[:, None]
    want = attn._relative_position_bucket(offsets)
    got = relative_position_buckets(n, buckets, max_distance)
    assert torch.equal(got, want)
    # every bucket occurs at this length (near, far, both directions) except 'after the query at offset 0'
    assert got.unique().numel() == buckets - 1


ODD = UMT5Config(
    vocab_size=97, dim=40, ffn_dim=24, num_heads=3, head_dim=8, num_layers=2, num_buckets=16, max_distance=20
)


@pytest.mark.parametrize(
    "cfg,lengths,total",
    [
        # real bucketing (32, 128) over 300 tokens: the log-spaced and the capped buckets both occur
        (UMT5Config(vocab_size=300, dim=48, ffn_dim=80, num_heads=4, head_dim=16, num_layers=3), [300, 140, 7], 300),
        # heads × head_dim ≠ dim, other bucketing, a single token prompt
        (ODD, [1, 33, 50], 50),
        (UMT5_PRESETS["tiny"], [12], 12),  # no padding
    ],
)
def test_forward_matches_transformers(cfg, lengths, total):
    ours, ref = make_pair(cfg)
    ids, mask = batch(cfg.vocab_size, lengths, total)
    with torch.no_grad():
        want = ref(ids, attention_mask=mask).last_hidden_state
        got = ours(ids, mask)
    assert got.shape == want.shape == (len(lengths), total, cfg.dim)
    err = rel_err(got, want)
    assert err <= TOL, f"relative error {err:.2e} > {TOL}"
    for i, n in enumerate(lengths):  # the real tokens of each prompt, separately
        assert rel_err(got[i, :n], want[i, :n]) <= TOL


def test_padding_mask_matters_and_padding_does_not_leak():
    cfg = UMT5Config(vocab_size=50, dim=32, ffn_dim=48, num_heads=4, head_dim=8, num_layers=2)
    ours, _ = make_pair(cfg)
    ids, mask = batch(cfg.vocab_size, [9, 20], 20)
    other = ids.clone()
    other[0, 9:] = (other[0, 9:] + 1) % cfg.vocab_size  # different padding ids
    with torch.no_grad():
        a, b = ours(ids, mask), ours(other, mask)
        short = ours(ids[:1, :9], mask[:1, :9])  # the same prompt without any padding
        unmasked = ours(ids, None)
    assert torch.equal(a[0, :9], b[0, :9])  # padding never reaches the real tokens
    assert rel_err(a[0, :9], short[0]) <= TOL  # so the amount of padding does not matter either
    assert rel_err(unmasked[0, :9], a[0, :9]) > 1e-2  # and without the mask it would


@pytest.fixture(scope="module")
def tokenizer_folder(tmp_path_factory):
    return make_test_tokenizer_folder(tmp_path_factory.mktemp("tokenizer"))


def test_encode_prompts_matches_diffusers(tokenizer_folder):
    """encode_prompts == ChronoEditPipeline._get_t5_prompt_embeds run on the reference tokenizer and encoder."""
    pytest.importorskip("ftfy")  # diffusers' prompt cleaning needs it
    from diffusers.pipelines.chronoedit.pipeline_chronoedit import ChronoEditPipeline

    ref_tok = transformers.T5TokenizerFast.from_pretrained(str(tokenizer_folder))
    cfg = UMT5_PRESETS["tiny"].replace(vocab_size=len(ref_tok))
    ours, ref = make_pair(cfg)
    prompts = [
        "turn the sky into a watercolor painting",
        "  Tom &amp;amp; Jerry   in  São Paulo  ",
        "",
        "a cat 🐱 with a hat 🦙 一只猫",
        "a very long prompt about a mountain and a river at night " * 60,  # truncated at 512
    ]
    pipe = SimpleNamespace(tokenizer=ref_tok, text_encoder=ref, _execution_device=torch.device("cpu"))
    with torch.no_grad():
        want = ChronoEditPipeline._get_t5_prompt_embeds(pipe, prompts, max_sequence_length=512, dtype=torch.float32)
    got = encode_prompts(ours, Tokenizer.from_folder(tokenizer_folder), prompts, max_length=512)
    assert got.shape == want.shape == (len(prompts), 512, cfg.dim)
    assert torch.equal(got == 0, want == 0)  # the same zero padding after each prompt's tokens
    lengths = (want.abs().sum(-1) > 0).sum(1).tolist()
    assert lengths[2] == 1 and lengths[4] == 512 and len(set(lengths)) == len(lengths)
    err = rel_err(got, want)
    assert err <= TOL, f"relative error {err:.2e} > {TOL}"


def test_bf16_keeps_norms_fp32_and_agrees_with_fp32():
    cfg = UMT5Config(vocab_size=120, dim=64, ffn_dim=96, num_heads=4, head_dim=16, num_layers=2)
    ours, _ = make_pair(cfg)
    ids, mask = batch(cfg.vocab_size, [30, 12], 30)
    with torch.no_grad():
        want = ours(ids, mask)
        cast_params(ours, torch.bfloat16, UMT5Encoder.keep_fp32)
        got = ours(ids, mask)
    dtypes = {n: p.dtype for n, p in ours.named_parameters()}
    assert dtypes["norm.weight"] == dtypes["blocks.0.norm1.weight"] == dtypes["blocks.1.norm2.weight"] == torch.float32
    assert dtypes["blocks.0.attn.q.weight"] == dtypes["token_embedding.weight"] == torch.bfloat16
    assert dtypes["blocks.0.pos_embedding.embedding.weight"] == torch.bfloat16
    assert got.dtype == torch.bfloat16 and torch.isfinite(got).all()
    err = rel_err(got, want)
    assert err < 3e-2, f"bf16 vs fp32 relative error {err:.2e}"


def test_load_sharded_folder_strict_and_lean(tmp_path):
    cfg = UMT5Config(vocab_size=64, dim=32, ffn_dim=48, num_heads=2, head_dim=8, num_layers=2)
    _, ref = make_pair(cfg)
    ref.save_pretrained(str(tmp_path), max_shard_size="20KB")  # several shards + index
    assert len(list(tmp_path.glob("*.safetensors"))) > 2
    ids, mask = batch(cfg.vocab_size, [10, 4], 10)
    with torch.no_grad():
        want = ref(ids, attention_mask=mask).last_hidden_state
        got = load_umt5(tmp_path, dtype=torch.float32)(ids, mask)
    assert rel_err(got, want) <= TOL
    bf16 = load_umt5(tmp_path, dtype=torch.bfloat16)
    assert bf16.blocks[1].ffn.fc2.weight.dtype == torch.bfloat16 and bf16.norm.weight.dtype == torch.float32
    assert not any(p.is_meta for p in bf16.parameters())


def test_tied_embedding_under_either_name():
    cfg = UMT5Config(vocab_size=30, dim=16, ffn_dim=16, num_heads=2, head_dim=8, num_layers=1)
    _, ref = make_pair(cfg)
    state = ref.state_dict()
    assert torch.equal(state["shared.weight"], state["encoder.embed_tokens.weight"])  # tied
    only_twin = {k: v for k, v in state.items() if k != "shared.weight"}
    only_shared = {k: v for k, v in state.items() if k != "encoder.embed_tokens.weight"}
    for tensors in (state, only_twin, only_shared):
        converted = TRANSFORMERS_TO_OURS.convert(untie_embedding(tensors))
        assert torch.equal(converted["token_embedding.weight"], state["shared.weight"])


def test_loading_names_every_bad_key(tmp_path):
    cfg = UMT5Config(vocab_size=30, dim=16, ffn_dim=16, num_heads=2, head_dim=8, num_layers=1)
    _, ref = make_pair(cfg)
    (tmp_path / "config.json").write_text(json.dumps(ref.config.to_dict()))
    state = {k: v.clone() for k, v in ref.state_dict().items() if k != "encoder.embed_tokens.weight"}
    del state["encoder.block.0.layer.1.DenseReluDense.wo.weight"]
    state["encoder.block.0.layer.0.SelfAttention.q.weight"] = torch.zeros(3, 3)
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"missing: blocks\.0\.ffn\.fc2\.weight.*misshaped: blocks\.0\.attn\.q"):
        load_umt5(tmp_path, dtype=torch.float32)
    state = {k: v.clone() for k, v in ref.state_dict().items() if k != "encoder.embed_tokens.weight"}
    state["decoder.block.0.layer.0.SelfAttention.q.weight"] = torch.zeros(1)
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"not in the key map: decoder\.block\.0"):
        load_umt5(tmp_path, dtype=torch.float32)


def test_xxl_preset_covers_transformers_on_meta():
    """Every UMT5EncoderModel key at the real config maps to ours with the same shape (or is the tied twin)."""
    released = {
        "architectures": ["UMT5EncoderModel"], "d_ff": 10240, "d_kv": 64, "d_model": 4096,
        "dense_act_fn": "gelu_new", "feed_forward_proj": "gated-gelu", "is_encoder_decoder": True,
        "layer_norm_epsilon": 1e-06, "model_type": "umt5", "num_decoder_layers": 24, "num_heads": 64,
        "num_layers": 24, "relative_attention_max_distance": 128, "relative_attention_num_buckets": 32,
        "tie_word_embeddings": False, "vocab_size": 256384,
    }  # fmt: skip
    cfg = config_from_transformers(released)
    assert cfg == UMT5_PRESETS["umt5_xxl"]
    with torch.device("meta"):
        ref = transformers.UMT5EncoderModel(transformers.UMT5Config(**released))
        ours = UMT5Encoder(cfg)
    ref_shapes = {k: tuple(v.shape) for k, v in TRANSFORMERS_TO_OURS.convert(ref.state_dict()).items()}
    assert ref_shapes == {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    n = sum(p.numel() for p in ours.parameters())
    assert n == sum(p.numel() for p in ref.parameters())
    assert 5.6e9 < n < 5.8e9  # UMT5-XXL encoder: 5.68B parameters
    assert config_from_shapes(ours.state_dict()) == cfg  # what a one-file Wan .pth is read as


@pytest.mark.parametrize("naming", ["wan_pth", "wan_safetensors", "transformers_safetensors"])
def test_one_file_encoder_loads_and_converts_to_native(tmp_path, caplog, naming):
    """Wan 2.1's ``models_t5_umt5-xxl-enc-bf16.pth`` layout (our names) or one transformers-named file: the config
    is read off the shapes (heads × head_dim ≠ dim here) and the encoder equals transformers' (fp32, ≤ 1e-5)."""
    from chronoedit.checkpoint.encoders import load_text_encoder
    from tools.convert import main as convert

    cfg = UMT5Config(vocab_size=300, dim=40, ffn_dim=24, num_heads=3, head_dim=8, num_layers=3)
    ours, ref = make_pair(cfg)
    if naming == "wan_pth":
        path = tmp_path / "models_t5_umt5-enc.pth"
        torch.save(ours.state_dict(), path)
    elif naming == "wan_safetensors":
        path = tmp_path / "umt5.safetensors"
        save_file(ours.state_dict(), path)
    else:
        path = tmp_path / "umt5.safetensors"
        state = {k: v for k, v in ref.state_dict().items() if k != "shared.weight"}  # the tied twin only
        save_file(state, path)
    with caplog.at_level("INFO", logger="chronoedit"):
        got = load_text_encoder(path, dtype=torch.float32)
    assert f"{naming.split('_')[0]} naming" in caplog.text
    assert got.cfg == cfg
    ids, mask = batch(cfg.vocab_size, [9, 4], 9)
    with torch.no_grad():
        assert rel_err(got(ids, mask), ref(ids, attention_mask=mask).last_hidden_state) <= TOL
    assert convert([str(path), str(tmp_path / "native"), "--component", "text_encoder", "--dtype", "bf16"]) == 0
    native = load_text_encoder(tmp_path / "native", dtype=torch.bfloat16)
    direct = load_text_encoder(path, dtype=torch.bfloat16)
    assert native.cfg == cfg
    assert all(torch.equal(v, direct.state_dict()[k]) for k, v in native.state_dict().items())


def test_one_file_encoder_errors_name_the_file(tmp_path):
    from chronoedit.checkpoint.encoders import load_text_encoder

    ours, _ = make_pair(UMT5_PRESETS["tiny"])
    state = ours.state_dict()
    del state["blocks.0.pos_embedding.embedding.weight"]
    save_file(state, tmp_path / "no_bias.safetensors")
    with pytest.raises(CheckpointError, match=r"no_bias\.safetensors \(UMT5\): cannot infer the encoder's config"):
        load_text_encoder(tmp_path / "no_bias.safetensors")
    save_file({"vision_model.embeddings.patch_embedding.weight": torch.ones(2)}, tmp_path / "clip.safetensors")
    with pytest.raises(CheckpointError, match=r"clip\.safetensors \(UMT5\): not a recognised format"):
        load_text_encoder(tmp_path / "clip.safetensors")


def test_bad_inputs_and_configs_are_clear_errors():
    ours = UMT5Encoder(UMT5_PRESETS["tiny"])
    ids = torch.zeros(2, 5, dtype=torch.long)
    with pytest.raises(ValueError, match=r"integer \(B, L\)"):
        ours(ids[0])
    with pytest.raises(ValueError, match=r"integer \(B, L\)"):
        ours(ids.float())
    with pytest.raises(ValueError, match="outside the vocabulary"):
        ours(ids + 5000)
    with pytest.raises(ValueError, match=r"no tokens in rows \[1\]"):
        ours(ids, torch.tensor([[1, 1, 0, 0, 0], [0, 0, 0, 0, 0]]))
    with pytest.raises(ValueError, match="mask shape"):
        ours(ids, torch.ones(2, 4))
    with pytest.raises(ValueError, match="num_buckets"):
        UMT5Config(num_buckets=7)
    with pytest.raises(ValueError, match="model_type='t5'"):
        config_from_transformers({"model_type": "t5"})
    with pytest.raises(ValueError, match="feed_forward_proj"):
        config_from_transformers({"model_type": "umt5", "feed_forward_proj": "relu"})
