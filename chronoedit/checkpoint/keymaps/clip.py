"""CLIP vision names: transformers (``CLIPVisionModelWithProjection`` / ``CLIPVisionModel`` files) -> ours.

Our tower stops at the penultimate block, so the map depends on the depth: blocks ``0 … num_layers−2`` are
renamed, while the last block, ``post_layernorm``, ``visual_projection`` and the old ``position_ids`` buffer
are declared known-and-dropped. Any other key — e.g. a block beyond ``num_layers`` — stays an error.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from chronoedit.checkpoint.keymap import KeyMap
from chronoedit.models.clip.config import ACTIVATIONS, CLIPVisionConfig

PREFIX = "vision_model."  # both transformers classes save their tower under this prefix

_STEM = [
    ("embeddings.class_embedding", "class_embedding"),
    ("embeddings.patch_embedding.weight", "patch_embedding.weight"),
    ("embeddings.position_embedding.weight", "position_embedding"),
    ("pre_layrnorm.{p}", "pre_norm.{p}"),  # sic: transformers' spelling
]
_BLOCK = [
    ("layer_norm1.{p}", "norm1.{p}"),
    ("self_attn.q_proj.{p}", "attn.q.{p}"),
    ("self_attn.k_proj.{p}", "attn.k.{p}"),
    ("self_attn.v_proj.{p}", "attn.v.{p}"),
    ("self_attn.out_proj.{p}", "attn.o.{p}"),
    ("layer_norm2.{p}", "norm2.{p}"),
    ("mlp.fc1.{p}", "mlp.fc1.{p}"),
    ("mlp.fc2.{p}", "mlp.fc2.{p}"),
]
_UNUSED = [  # known, not needed for the penultimate hidden states
    f"{PREFIX}post_layernorm.{{p}}",
    "visual_projection.weight",
    f"{PREFIX}embeddings.position_ids",  # a buffer older transformers saved
]


def transformers_to_ours(num_layers: int) -> KeyMap:
    """The key map for a checkpoint with ``num_layers`` blocks (its last one declared dropped)."""
    if num_layers < 1:
        raise ValueError(f"num_layers={num_layers} must be positive")
    layers = f"{PREFIX}encoder.layers"
    rules = [(PREFIX + src, dst) for src, dst in _STEM]
    rules += [(f"{layers}.{i}.{src}", f"blocks.{i}.{dst}") for i in range(num_layers - 1) for src, dst in _BLOCK]
    last = [f"{layers}.{num_layers - 1}.{src}" for src, _ in _BLOCK]
    return KeyMap(rules, ignore=last + _UNUSED)


def with_prefix(keys: Mapping[str, Any]) -> dict[str, Any]:
    """transformers 5's bare ``CLIPVisionModel`` state dict has no ``vision_model.`` prefix; add it."""
    if any(k.startswith(PREFIX) for k in keys):
        return dict(keys)
    return {(k if k.startswith("visual_projection.") else PREFIX + k): v for k, v in keys.items()}


# transformers' CLIPVisionConfig defaults, for keys a config.json leaves out
_DEFAULTS: dict[str, Any] = dict(
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    num_channels=3,
    image_size=224,
    patch_size=32,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
)


def config_from_transformers(config: Mapping[str, Any], **overrides: Any) -> CLIPVisionConfig:
    """A :class:`CLIPVisionConfig` from a transformers ``image_encoder/config.json`` dict.

    Accepts a vision config (``model_type`` ``clip_vision_model``) or a full CLIP config (its ``vision_config``).
    """
    model_type = config.get("model_type", "clip_vision_model")
    if model_type == "clip":
        config = config.get("vision_config") or {}
    elif model_type != "clip_vision_model":
        raise ValueError(f"image encoder config has model_type={model_type!r}; expected 'clip_vision_model'")
    c = {**_DEFAULTS, **config}
    if c["hidden_act"] not in ACTIVATIONS:
        raise ValueError(f"hidden_act={c['hidden_act']!r} is not supported (one of {ACTIVATIONS})")
    cfg = dict(
        dim=c["hidden_size"],
        ffn_dim=c["intermediate_size"],
        num_heads=c["num_attention_heads"],
        num_layers=c["num_hidden_layers"],
        patch_size=c["patch_size"],
        image_size=c["image_size"],
        num_channels=c["num_channels"],
        activation=c["hidden_act"],
        eps=c["layer_norm_eps"],
    )
    cfg.update(overrides)
    return CLIPVisionConfig(**cfg)


def config_to_transformers(cfg: CLIPVisionConfig, projection_dim: int = 1024) -> dict[str, Any]:
    """transformers ``CLIPVisionConfig`` arguments for ``cfg`` (used by the parity tests)."""
    return dict(
        hidden_size=cfg.dim,
        intermediate_size=cfg.ffn_dim,
        num_attention_heads=cfg.num_heads,
        num_hidden_layers=cfg.num_layers,
        patch_size=cfg.patch_size,
        image_size=cfg.image_size,
        num_channels=cfg.num_channels,
        hidden_act=cfg.activation,
        layer_norm_eps=cfg.eps,
        projection_dim=projection_dim,
    )
