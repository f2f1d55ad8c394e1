"""DiT names: diffusers (``ChronoEditTransformer3DModel`` / ``WanTransformer3DModel``) -> ours (original Wan).

Our names are the original Wan 2.1 names, so Wan / ComfyUI single files need no renaming (only a prefix strip).
"""

from __future__ import annotations

from typing import Any

from chronoedit.checkpoint.keymap import KeyMap
from chronoedit.models.dit.config import DiTConfig

_ATTN = [("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "o")]

DIFFUSERS_TO_OURS = KeyMap(
    [
        ("patch_embedding.{p}", "patch_embedding.{p}"),
        ("condition_embedder.text_embedder.linear_1.{p}", "text_embedding.0.{p}"),
        ("condition_embedder.text_embedder.linear_2.{p}", "text_embedding.2.{p}"),
        ("condition_embedder.time_embedder.linear_1.{p}", "time_embedding.0.{p}"),
        ("condition_embedder.time_embedder.linear_2.{p}", "time_embedding.2.{p}"),
        ("condition_embedder.time_proj.{p}", "time_projection.1.{p}"),
        ("condition_embedder.image_embedder.norm1.{p}", "img_emb.proj.0.{p}"),
        ("condition_embedder.image_embedder.ff.net.0.proj.{p}", "img_emb.proj.1.{p}"),
        ("condition_embedder.image_embedder.ff.net.2.{p}", "img_emb.proj.3.{p}"),
        ("condition_embedder.image_embedder.norm2.{p}", "img_emb.proj.4.{p}"),
        *[(f"blocks.{{n}}.attn1.{a}.{{p}}", f"blocks.{{n}}.self_attn.{b}.{{p}}") for a, b in _ATTN],
        *[(f"blocks.{{n}}.attn2.{a}.{{p}}", f"blocks.{{n}}.cross_attn.{b}.{{p}}") for a, b in _ATTN],
        ("blocks.{n}.attn1.norm_q.weight", "blocks.{n}.self_attn.norm_q.weight"),
        ("blocks.{n}.attn1.norm_k.weight", "blocks.{n}.self_attn.norm_k.weight"),
        ("blocks.{n}.attn2.norm_q.weight", "blocks.{n}.cross_attn.norm_q.weight"),
        ("blocks.{n}.attn2.norm_k.weight", "blocks.{n}.cross_attn.norm_k.weight"),
        ("blocks.{n}.attn2.add_k_proj.{p}", "blocks.{n}.cross_attn.k_img.{p}"),
        ("blocks.{n}.attn2.add_v_proj.{p}", "blocks.{n}.cross_attn.v_img.{p}"),
        ("blocks.{n}.attn2.norm_added_k.weight", "blocks.{n}.cross_attn.norm_k_img.weight"),
        ("blocks.{n}.norm2.{p}", "blocks.{n}.norm3.{p}"),  # the affine LayerNorm before cross-attention
        ("blocks.{n}.ffn.net.0.proj.{p}", "blocks.{n}.ffn.0.{p}"),
        ("blocks.{n}.ffn.net.2.{p}", "blocks.{n}.ffn.2.{p}"),
        ("blocks.{n}.scale_shift_table", "blocks.{n}.modulation"),  # (1, 6, D): shift, scale, gate ×2
        ("proj_out.{p}", "head.head.{p}"),
        ("scale_shift_table", "head.modulation"),  # (1, 2, D): shift, scale
    ],
    # diffusers itself drops this one on load (_keys_to_ignore_on_load_unexpected)
    ignore=["blocks.{n}.attn2.norm_added_q.weight"],
)

OURS_TO_DIFFUSERS = DIFFUSERS_TO_OURS.inverse()

# Wan / ComfyUI single files use our names, sometimes under one of these prefixes.
WAN_PREFIXES = ("model.diffusion_model.", "diffusion_model.")

DIFFUSERS_CLASS_NAMES = ("ChronoEditTransformer3DModel", "WanTransformer3DModel")


def config_from_diffusers(config: dict[str, Any], **overrides: Any) -> DiTConfig:
    """A :class:`DiTConfig` from a diffusers ``transformer/config.json`` dict (checked, not assumed)."""
    cls = config.get("_class_name")
    if cls is not None and cls not in DIFFUSERS_CLASS_NAMES:
        raise ValueError(f"transformer config has _class_name={cls!r}; expected one of {DIFFUSERS_CLASS_NAMES}")
    # diffusers' WanAttention normalises q and k whatever qk_norm says; only the across-heads form exists.
    if config.get("qk_norm", "rms_norm_across_heads") not in ("rms_norm_across_heads", None):
        raise ValueError(f"unsupported qk_norm={config['qk_norm']!r} (only 'rms_norm_across_heads' or null)")
    if config.get("pos_embed_seq_len") is not None:
        raise ValueError("pos_embed_seq_len (Wan 2.1 FLF2V image position embedding) is not supported")
    heads, head_dim = config.get("num_attention_heads", 40), config.get("attention_head_dim", 128)
    dim = heads * head_dim
    image_dim = config.get("image_dim")
    added = config.get("added_kv_proj_dim")
    if (image_dim is None) != (added is None) or (added is not None and added != dim):
        raise ValueError(f"image_dim={image_dim} with added_kv_proj_dim={added}: expected both null or {dim}")
    cfg = dict(
        dim=dim,
        num_heads=heads,
        num_layers=config.get("num_layers", 40),
        ffn_dim=config.get("ffn_dim", 13824),
        in_channels=config.get("in_channels", 16),
        out_channels=config.get("out_channels") or config.get("in_channels", 16),
        patch_size=tuple(config.get("patch_size", (1, 2, 2))),
        text_dim=config.get("text_dim", 4096),
        image_dim=image_dim,
        freq_dim=config.get("freq_dim", 256),
        eps=config.get("eps", 1e-6),
        qk_norm=True,
        cross_attn_norm=config.get("cross_attn_norm", True),
        rope_max_seq_len=config.get("rope_max_seq_len", 1024),
        rope_temporal_skip_len=config.get("rope_temporal_skip_len", 8),  # absent in the released config -> 8
    )
    cfg.update(overrides)
    return DiTConfig(**cfg)


def config_to_diffusers(cfg: DiTConfig) -> dict[str, Any]:
    """The diffusers ``ChronoEditTransformer3DModel`` constructor arguments for ``cfg``."""
    if not cfg.qk_norm:
        raise ValueError("diffusers always applies q/k RMSNorm; a DiTConfig with qk_norm=False has no diffusers form")
    return dict(
        patch_size=list(cfg.patch_size),
        num_attention_heads=cfg.num_heads,
        attention_head_dim=cfg.head_dim,
        in_channels=cfg.in_channels,
        out_channels=cfg.out_channels,
        text_dim=cfg.text_dim,
        freq_dim=cfg.freq_dim,
        ffn_dim=cfg.ffn_dim,
        num_layers=cfg.num_layers,
        cross_attn_norm=cfg.cross_attn_norm,
        qk_norm="rms_norm_across_heads",
        eps=cfg.eps,
        image_dim=cfg.image_dim,
        added_kv_proj_dim=cfg.dim if cfg.image_dim is not None else None,
        rope_max_seq_len=cfg.rope_max_seq_len,
        rope_temporal_skip_len=cfg.rope_temporal_skip_len,
    )
