"""VAE names: diffusers (``AutoencoderKLWan``) -> ours, and original Wan 2.1 (``Wan2.1_VAE.pth``) -> ours.

Our names are the original Wan 2.1 names, so the Wan map is the identity on a closed set of patterns (it still
rejects any key it does not know). The diffusers decoder nests its levels (``up_blocks.i.resnets.j``,
``up_blocks.i.upsamplers.0``) where Wan has one flat list (``upsamples.k``), so that table depends on
``num_res_blocks`` and is built per config; ``DIFFUSERS_TO_OURS`` is the one for the released VAE.
"""

from __future__ import annotations

from typing import Any

from chronoedit.checkpoint.keymap import KeyMap
from chronoedit.models.vae.config import VAE_PRESETS, VAEConfig

DIFFUSERS_CLASS_NAMES = ("AutoencoderKLWan",)

# (diffusers suffix, ours) inside one residual block, one attention block, one resampler
_RESBLOCK = [
    ("norm1.gamma", "residual.0.gamma"),
    ("conv1.{p}", "residual.2.{p}"),
    ("norm2.gamma", "residual.3.gamma"),
    ("conv2.{p}", "residual.6.{p}"),
    ("conv_shortcut.{p}", "shortcut.{p}"),
]
_ATTENTION = [("norm.gamma", "norm.gamma"), ("to_qkv.{p}", "to_qkv.{p}"), ("proj.{p}", "proj.{p}")]
_RESAMPLE = [("resample.1.{p}", "resample.1.{p}"), ("time_conv.{p}", "time_conv.{p}")]


def _block(src: str, dst: str, table: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(f"{src}.{a}", f"{dst}.{b}") for a, b in table]


def _shared_rules() -> list[tuple[str, str]]:
    """Everything but the decoder's levels: both formats index the encoder's levels in one flat list."""
    rules = [
        ("quant_conv.{p}", "conv1.{p}"),
        ("post_quant_conv.{p}", "conv2.{p}"),
        ("encoder.conv_in.{p}", "encoder.conv1.{p}"),
        *_block("encoder.down_blocks.{n}", "encoder.downsamples.{n}", _RESBLOCK + _RESAMPLE),
        ("decoder.conv_in.{p}", "decoder.conv1.{p}"),
    ]
    for part in ("encoder", "decoder"):
        rules += _block(f"{part}.mid_block.resnets.0", f"{part}.middle.0", _RESBLOCK)
        rules += _block(f"{part}.mid_block.attentions.0", f"{part}.middle.1", _ATTENTION)
        rules += _block(f"{part}.mid_block.resnets.1", f"{part}.middle.2", _RESBLOCK)
        rules.append((f"{part}.norm_out.gamma", f"{part}.head.0.gamma"))
        rules.append((f"{part}.conv_out.{{p}}", f"{part}.head.2.{{p}}"))
    return rules


def diffusers_to_ours(cfg: VAEConfig) -> KeyMap:
    """The diffusers -> ours key map for ``cfg``: decoder level i, block j -> ``upsamples.i·(r + 2) + j``
    (r = num_res_blocks: r + 1 residual blocks and one upsampler per level)."""
    rules = _shared_rules()
    per_level = cfg.num_res_blocks + 2
    for i in range(len(cfg.dim_mult)):
        for j in range(cfg.num_res_blocks + 1):
            rules += _block(f"decoder.up_blocks.{i}.resnets.{j}", f"decoder.upsamples.{i * per_level + j}", _RESBLOCK)
        if i < len(cfg.dim_mult) - 1:
            k = i * per_level + cfg.num_res_blocks + 1
            rules += _block(f"decoder.up_blocks.{i}.upsamplers.0", f"decoder.upsamples.{k}", _RESAMPLE)
    return KeyMap(rules)


def _identity(patterns: list[str]) -> KeyMap:
    return KeyMap([(p, p) for p in patterns])


_WAN_GROUPS = ("encoder.downsamples", "encoder.middle", "decoder.middle", "decoder.upsamples")  # flat lists
_WAN_BLOCK = [suffix for _, suffix in _RESBLOCK + _ATTENTION + _RESAMPLE]  # anything a list entry may hold
WAN_TO_OURS = _identity(
    [
        "conv1.{p}",
        "conv2.{p}",
        "encoder.conv1.{p}",
        "decoder.conv1.{p}",
        *[f"{group}.{{n}}.{suffix}" for group in _WAN_GROUPS for suffix in _WAN_BLOCK],
        "encoder.head.0.gamma",
        "encoder.head.2.{p}",
        "decoder.head.0.gamma",
        "decoder.head.2.{p}",
    ]
)

DIFFUSERS_TO_OURS = diffusers_to_ours(VAE_PRESETS["wan21"])
OURS_TO_DIFFUSERS = DIFFUSERS_TO_OURS.inverse()


def config_from_diffusers(config: dict[str, Any], **overrides: Any) -> VAEConfig:
    """A :class:`VAEConfig` from a diffusers ``vae/config.json`` dict (absent keys take diffusers' defaults,
    which are the released VAE's); options this implementation does not have are rejected, not ignored."""
    cls = config.get("_class_name")
    if cls is not None and cls not in DIFFUSERS_CLASS_NAMES:
        raise ValueError(f"vae config has _class_name={cls!r}; expected one of {DIFFUSERS_CLASS_NAMES}")
    unsupported = {
        "attn_scales": ([], "attention inside the levels"),
        "is_residual": (False, "the Wan 2.2 residual up/down blocks"),
        "patch_size": (None, "patchified (Wan 2.2) inputs"),
        "in_channels": (3, "video channels other than RGB"),
        "out_channels": (3, "video channels other than RGB"),
    }
    for key, (default, what) in unsupported.items():
        if config.get(key, default) != default:
            raise ValueError(f"unsupported vae config {key}={config[key]!r} ({what})")
    base = config.get("base_dim", 96)
    if config.get("decoder_base_dim") not in (None, base):
        raise ValueError(f"decoder_base_dim={config['decoder_base_dim']} differs from base_dim={base}: unsupported")
    defaults = VAEConfig()
    cfg = dict(
        base_dim=base,
        z_dim=config.get("z_dim", 16),
        dim_mult=tuple(config.get("dim_mult", defaults.dim_mult)),
        num_res_blocks=config.get("num_res_blocks", 2),
        temporal_downsample=tuple(config.get("temperal_downsample", defaults.temporal_downsample)),
        latents_mean=tuple(config.get("latents_mean", defaults.latents_mean)),
        latents_std=tuple(config.get("latents_std", defaults.latents_std)),
    )
    cfg.update(overrides)
    out = VAEConfig(**cfg)
    for key, ours in (("scale_factor_spatial", out.spatial_factor), ("scale_factor_temporal", out.temporal_factor)):
        if config.get(key) not in (None, ours):
            raise ValueError(f"vae config {key}={config[key]} contradicts its architecture ({ours})")
    return out


def config_to_diffusers(cfg: VAEConfig) -> dict[str, Any]:
    """The diffusers ``AutoencoderKLWan`` constructor arguments for ``cfg``."""
    return dict(
        base_dim=cfg.base_dim,
        z_dim=cfg.z_dim,
        dim_mult=list(cfg.dim_mult),
        num_res_blocks=cfg.num_res_blocks,
        attn_scales=[],
        temperal_downsample=list(cfg.temporal_downsample),
        dropout=0.0,
        latents_mean=list(cfg.latents_mean),
        latents_std=list(cfg.latents_std),
        scale_factor_spatial=cfg.spatial_factor,
        scale_factor_temporal=cfg.temporal_factor,
    )


__all__ = [
    "DIFFUSERS_CLASS_NAMES",
    "DIFFUSERS_TO_OURS",
    "OURS_TO_DIFFUSERS",
    "WAN_TO_OURS",
    "config_from_diffusers",
    "config_to_diffusers",
    "diffusers_to_ours",
]
