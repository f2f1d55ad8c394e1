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


# ---------------------------------------------------------------------------------------------- one-file namings
# open-clip (``clip_vision_h.safetensors``) and Wan 2.1's ``models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth``
# fuse q/k/v into one projection: :func:`split_fused` first splits it into three synthetic keys (``…_q.weight``)
# that these maps then rename. Block indices are counted in the file; its last block is dropped as above.

OPEN_CLIP_FUSED = {"attn.in_proj_weight": "attn.in_proj_{}.weight", "attn.in_proj_bias": "attn.in_proj_{}.bias"}
WAN_FUSED = {"attn.to_qkv.weight": "attn.to_qkv_{}.weight", "attn.to_qkv.bias": "attn.to_qkv_{}.bias"}

_OPEN_CLIP_STEM = [
    ("visual.conv1.weight", "patch_embedding.weight"),
    ("visual.class_embedding", "class_embedding"),
    ("visual.positional_embedding", "position_embedding"),
    ("visual.ln_pre.{p}", "pre_norm.{p}"),
]
_OPEN_CLIP_BLOCK = [
    ("ln_1.{p}", "norm1.{p}"),
    *[(f"attn.in_proj_{x}.{{p}}", f"attn.{x}.{{p}}") for x in "qkv"],
    ("attn.out_proj.{p}", "attn.o.{p}"),
    ("ln_2.{p}", "norm2.{p}"),
    ("mlp.c_fc.{p}", "mlp.fc1.{p}"),
    ("mlp.c_proj.{p}", "mlp.fc2.{p}"),
]
_OPEN_CLIP_UNUSED = ["visual.ln_post.{p}", "visual.proj", "logit_scale"]

_WAN_STEM = [
    ("visual.patch_embedding.weight", "patch_embedding.weight"),
    ("visual.cls_embedding", "class_embedding"),  # (1, 1, D): reshaped on read
    ("visual.pos_embedding", "position_embedding"),  # (1, N, D): reshaped on read
    ("visual.pre_norm.{p}", "pre_norm.{p}"),
]
_WAN_BLOCK = [
    ("norm1.{p}", "norm1.{p}"),
    *[(f"attn.to_qkv_{x}.{{p}}", f"attn.{x}.{{p}}") for x in "qkv"],
    ("attn.proj.{p}", "attn.o.{p}"),
    ("norm2.{p}", "norm2.{p}"),
    ("mlp.0.{p}", "mlp.fc1.{p}"),
    ("mlp.2.{p}", "mlp.fc2.{p}"),
]
_WAN_UNUSED = ["visual.post_norm.{p}", "visual.head", "logit_scale"]

# text-tower keys of whole-model files, known and ignored (only the vision tower is used)
TEXT_TOWER_PREFIXES = (
    "textual.",
    "transformer.",
    "token_embedding.",
    "ln_final.",
    "text_projection",
    "positional_embedding",
)
ONE_FILE_BLOCKS = {"open_clip": "visual.transformer.resblocks", "wan": "visual.transformer"}


def one_file_to_ours(naming: str, num_layers: int) -> KeyMap:
    """The map of a one-file ``naming`` ("open_clip" / "wan") with ``num_layers`` blocks (its last dropped)."""
    stem, block, unused = {
        "open_clip": (_OPEN_CLIP_STEM, _OPEN_CLIP_BLOCK, _OPEN_CLIP_UNUSED),
        "wan": (_WAN_STEM, _WAN_BLOCK, _WAN_UNUSED),
    }[naming]
    blocks = ONE_FILE_BLOCKS[naming]
    rules = list(stem) + [(f"{blocks}.{i}.{s}", f"blocks.{i}.{d}") for i in range(num_layers - 1) for s, d in block]
    last = [f"{blocks}.{num_layers - 1}.{s}" for s, _ in block]
    return KeyMap(rules, ignore=last + unused)


def split_fused(tensors: Mapping[str, Any], fused: Mapping[str, str], split: Any) -> dict[str, Any]:
    """``tensors`` with each fused q/k/v key (a suffix of ``fused``) replaced by three keys (its template filled
    with q, k, v), each ``split(tensor, start, stop)`` of a third of its rows."""
    out = {}
    for key, t in tensors.items():
        suffix = next((s for s in fused if key.endswith(s)), None)
        if suffix is None:
            out[key] = t
            continue
        third = t.shape[0] // 3
        for i, x in enumerate("qkv"):
            out[key[: -len(suffix)] + fused[suffix].format(x)] = split(t, i * third, (i + 1) * third)
    return out
