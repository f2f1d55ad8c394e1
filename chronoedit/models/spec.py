"""The architecture of a whole ChronoEdit model: one config per component, mirrored one-to-one by the Hydra group
``configs/model/`` (``model.dit.*``, ``model.vae.*``, ``model.text_encoder.*``, ``model.image_encoder.*``).

The dataclass defaults are the released ChronoEdit-14B; ``MODEL_PRESETS`` holds the named sizes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from chronoedit.models.clip.config import CLIP_PRESETS, CLIPVisionConfig
from chronoedit.models.dit.config import DIT_PRESETS, DiTConfig
from chronoedit.models.text.config import UMT5_PRESETS, UMT5Config
from chronoedit.models.vae.config import VAE_PRESETS, VAEConfig

COMPONENT_FIELDS = ("dit", "vae", "text_encoder", "image_encoder")


@dataclass
class ModelSpec:
    dit: DiTConfig = field(default_factory=DiTConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    text_encoder: UMT5Config = field(default_factory=UMT5Config)
    image_encoder: CLIPVisionConfig = field(default_factory=CLIPVisionConfig)

    def __post_init__(self) -> None:
        """The interfaces between components must agree (one line naming both sides)."""
        problems = []
        if self.dit.text_dim != self.text_encoder.dim:
            problems.append(f"model.dit.text_dim={self.dit.text_dim} != model.text_encoder.dim={self.text_encoder.dim}")
        if self.dit.image_dim is not None and self.dit.image_dim != self.image_encoder.dim:
            problems.append(
                f"model.dit.image_dim={self.dit.image_dim} != model.image_encoder.dim={self.image_encoder.dim}"
            )
        if self.dit.out_channels != self.vae.z_dim:
            problems.append(f"model.dit.out_channels={self.dit.out_channels} != model.vae.z_dim={self.vae.z_dim}")
        mask = self.vae.temporal_factor  # the first-frame mask has one channel per frame of a latent frame
        if self.dit.in_channels != 2 * self.vae.z_dim + mask:
            problems.append(
                f"model.dit.in_channels={self.dit.in_channels} != 2 × model.vae.z_dim + {mask} mask channels "
                f"= {2 * self.vae.z_dim + mask}"
            )
        if problems:
            raise ValueError("invalid model: " + "; ".join(problems))

    def replace(self, **components: Any) -> ModelSpec:
        return dataclasses.replace(self, **components)


def split_overrides(overrides: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{"dit.num_layers": 4, "vae.base_dim": 8}`` -> ``{"dit": {"num_layers": 4}, "vae": {"base_dim": 8}}``."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in overrides.items():
        component, _, name = key.partition(".")
        if component not in COMPONENT_FIELDS or not name:
            raise ValueError(f"model.{key}: not a field of the model (components: {COMPONENT_FIELDS})")
        out.setdefault(component, {})[name] = tuple(value) if isinstance(value, list) else value
    return out


def override_config(cfg: Any, component: str, changes: Mapping[str, Any]) -> Any:
    """``cfg`` (one component's config) with fields replaced; an unknown field is a ValueError naming it."""
    known = {f.name for f in dataclasses.fields(cfg)}
    unknown = [k for k in changes if k not in known]
    if unknown:
        raise ValueError(f"model.{component}.{unknown[0]}: {type(cfg).__name__} has no field {unknown[0]!r}")
    return dataclasses.replace(cfg, **changes)


def with_overrides(spec: ModelSpec, overrides: Mapping[str, Any]) -> ModelSpec:
    """``spec`` with fields replaced: ``{"dit.num_layers": 4, "vae.base_dim": 8}`` (validated like any config)."""
    parts = split_overrides(overrides)
    return spec.replace(**{c: override_config(getattr(spec, c), c, kv) for c, kv in parts.items()})


def flatten(spec: ModelSpec) -> dict[str, Any]:
    """Every field as ``{"dit.dim": 5120, …}`` (the inverse of :func:`with_overrides`)."""
    return {f"{c}.{f.name}": getattr(getattr(spec, c), f.name) for c in COMPONENT_FIELDS
            for f in dataclasses.fields(getattr(spec, c))}  # fmt: skip


def _preset(name: str) -> ModelSpec:
    dit = DIT_PRESETS[name].replace(text_dim=UMT5_PRESETS[name].dim, image_dim=CLIP_PRESETS[name].dim)
    return ModelSpec(dit, VAE_PRESETS[name], UMT5_PRESETS[name], CLIP_PRESETS[name])


MODEL_PRESETS: dict[str, ModelSpec] = {
    "chronoedit_14b": ModelSpec(),  # the released model (Wan 2.1 I2V 14B DiT, Wan 2.1 VAE, UMT5-XXL, ViT-H/14)
    "tiny": _preset("tiny"),  # random-weight tests and demos: every component at its tiny preset
    "toy": _preset("toy"),  # ChronoEdit-Toy: trained from scratch on the toy world on a CPU (make toy)
}

__all__ = [
    "COMPONENT_FIELDS",
    "MODEL_PRESETS",
    "ModelSpec",
    "flatten",
    "override_config",
    "split_overrides",
    "with_overrides",
]
