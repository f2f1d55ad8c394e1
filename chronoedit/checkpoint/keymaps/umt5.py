"""UMT5 encoder names: transformers (``UMT5EncoderModel``) -> ours (the original Wan 2.1 T5 names).

Our names are Wan's, so ``models_t5_umt5-xxl-enc-bf16.pth`` needs no renaming.
transformers ties ``encoder.embed_tokens.weight`` to ``shared.weight`` and saves one of them (newer versions
``shared.weight``); :func:`untie_embedding` makes sure the one we map is there.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from chronoedit.checkpoint.keymap import KeyMap
from chronoedit.models.text.config import UMT5Config

T = TypeVar("T")

_BLOCK = "encoder.block.{n}.layer"

TRANSFORMERS_TO_OURS = KeyMap(
    [
        ("shared.weight", "token_embedding.weight"),
        (f"{_BLOCK}.0.layer_norm.weight", "blocks.{n}.norm1.weight"),
        *[(f"{_BLOCK}.0.SelfAttention.{p}.weight", f"blocks.{{n}}.attn.{p}.weight") for p in "qkvo"],
        (f"{_BLOCK}.0.SelfAttention.relative_attention_bias.weight", "blocks.{n}.pos_embedding.embedding.weight"),
        (f"{_BLOCK}.1.layer_norm.weight", "blocks.{n}.norm2.weight"),
        (f"{_BLOCK}.1.DenseReluDense.wi_0.weight", "blocks.{n}.ffn.gate.0.weight"),  # the GELU branch
        (f"{_BLOCK}.1.DenseReluDense.wi_1.weight", "blocks.{n}.ffn.fc1.weight"),  # the linear branch
        (f"{_BLOCK}.1.DenseReluDense.wo.weight", "blocks.{n}.ffn.fc2.weight"),
        ("encoder.final_layer_norm.weight", "norm.weight"),
    ],
    ignore=["encoder.embed_tokens.weight"],  # tied to shared.weight (see untie_embedding)
)

OURS_TO_TRANSFORMERS = TRANSFORMERS_TO_OURS.inverse()

# Wan 2.1's ``models_t5_umt5-xxl-enc-bf16.pth`` (its T5Encoder state dict) uses our names: identity.
WAN_TO_OURS = KeyMap([(dst, dst) for _, dst in TRANSFORMERS_TO_OURS.rules])

TIED_EMBEDDING = ("shared.weight", "encoder.embed_tokens.weight")


def untie_embedding(tensors: Mapping[str, T]) -> dict[str, T]:
    """``tensors`` with ``shared.weight`` present: taken from its tied twin when only that one was saved."""
    shared, twin = TIED_EMBEDDING
    out = dict(tensors)
    if shared not in out and twin in out:
        out[shared] = out.pop(twin)
    return out


# transformers' UMT5Config defaults, for keys a config.json leaves out
_DEFAULTS: dict[str, Any] = dict(
    vocab_size=250112,
    d_model=512,
    d_kv=64,
    d_ff=1024,
    num_layers=8,
    num_heads=6,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    layer_norm_epsilon=1e-6,
    feed_forward_proj="gated-gelu",
)


def config_from_transformers(config: Mapping[str, Any], **overrides: Any) -> UMT5Config:
    """A :class:`UMT5Config` from a transformers ``text_encoder/config.json`` dict (checked, not assumed)."""
    model_type = config.get("model_type", "umt5")
    if model_type != "umt5":
        # T5 / mT5 share one relative-position table (layer 0) across layers: a different model.
        raise ValueError(f"text encoder config has model_type={model_type!r}; only 'umt5' is supported")
    c = {**_DEFAULTS, **config}
    if c["feed_forward_proj"] != "gated-gelu":
        raise ValueError(f"feed_forward_proj={c['feed_forward_proj']!r} is not supported (only 'gated-gelu')")
    if c.get("is_decoder"):
        raise ValueError("the config describes a UMT5 decoder; only the encoder is supported")
    cfg = dict(
        vocab_size=c["vocab_size"],
        dim=c["d_model"],
        ffn_dim=c["d_ff"],
        num_heads=c["num_heads"],
        head_dim=c["d_kv"],
        num_layers=c["num_layers"],
        num_buckets=c["relative_attention_num_buckets"],
        max_distance=c["relative_attention_max_distance"],
        eps=c["layer_norm_epsilon"],
    )
    cfg.update(overrides)
    return UMT5Config(**cfg)


def config_from_shapes(tensors: Mapping[str, Any], **overrides: Any) -> UMT5Config:
    """A :class:`UMT5Config` read off the shapes of a state dict in our (Wan) names, for one-file encoders that
    carry no config. ``max_distance`` and ``eps`` are not in the shapes: UMT5's 128 and 1e-6 unless overridden."""
    vocab, dim = tensors["token_embedding.weight"].shape
    layers = 1 + max(int(k.split(".")[1]) for k in tensors if k.startswith("blocks."))
    buckets, heads = tensors["blocks.0.pos_embedding.embedding.weight"].shape
    inner = tensors["blocks.0.attn.q.weight"].shape[0]
    cfg = dict(
        vocab_size=vocab,
        dim=dim,
        ffn_dim=tensors["blocks.0.ffn.fc1.weight"].shape[0],
        num_heads=heads,
        head_dim=inner // heads,
        num_layers=layers,
        num_buckets=buckets,
    )
    cfg.update(overrides)
    return UMT5Config(**cfg)


def config_to_transformers(cfg: UMT5Config) -> dict[str, Any]:
    """transformers ``UMT5Config`` arguments for ``cfg`` (used by the parity tests)."""
    return dict(
        vocab_size=cfg.vocab_size,
        d_model=cfg.dim,
        d_ff=cfg.ffn_dim,
        d_kv=cfg.head_dim,
        num_heads=cfg.num_heads,
        num_layers=cfg.num_layers,
        relative_attention_num_buckets=cfg.num_buckets,
        relative_attention_max_distance=cfg.max_distance,
        layer_norm_epsilon=cfg.eps,
        feed_forward_proj="gated-gelu",
    )
