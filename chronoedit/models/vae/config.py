"""Typed configuration of the causal video VAE (Wan 2.1) and its presets."""

from __future__ import annotations

from dataclasses import dataclass, replace

# Per-channel statistics of the released Wan 2.1 VAE latents (its config.json; diffusers' defaults).
WAN21_LATENTS_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip
WAN21_LATENTS_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip


@dataclass
class VAEConfig:
    """Architecture of the Wan 2.1 causal 3D VAE (how to run it — tiles, strips — is
    :class:`chronoedit.runtime.VAETiling`, an argument of each call).

    Field names follow the original Wan config (``temporal_downsample`` is spelt correctly here).
    """

    base_dim: int = 96  # channels of the first level; level i has base_dim × dim_mult[i]
    z_dim: int = 16  # latent channels (the encoder emits 2 × z_dim: mean and log-variance)
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)  # one entry per level; len − 1 spatial halvings
    num_res_blocks: int = 2  # residual blocks per encoder level (the decoder has one more)
    temporal_downsample: tuple[bool, ...] = (False, True, True)  # per level transition; the decoder mirrors it
    latents_mean: tuple[float, ...] = WAN21_LATENTS_MEAN  # z_dim values: normalize = (z − mean) / std
    latents_std: tuple[float, ...] = WAN21_LATENTS_STD

    def __post_init__(self) -> None:
        self.dim_mult = tuple(int(m) for m in self.dim_mult)
        self.temporal_downsample = tuple(bool(t) for t in self.temporal_downsample)
        self.latents_mean = tuple(float(v) for v in self.latents_mean)
        self.latents_std = tuple(float(v) for v in self.latents_std)
        problems = []
        for name in ("base_dim", "z_dim", "num_res_blocks"):
            if getattr(self, name) <= 0:
                problems.append(f"{name}={getattr(self, name)} must be positive")
        if not self.dim_mult or min(self.dim_mult) <= 0:
            problems.append(f"dim_mult={self.dim_mult} must be a non-empty tuple of positive ints")
        elif any((self.base_dim * m) % 2 for m in self.dim_mult):
            problems.append(f"base_dim × dim_mult = {[self.base_dim * m for m in self.dim_mult]} must all be even")
        if len(self.temporal_downsample) != len(self.dim_mult) - 1:
            problems.append(
                f"temporal_downsample={self.temporal_downsample} needs len(dim_mult) − 1 = {len(self.dim_mult) - 1} "
                "entries"
            )
        if len(self.latents_mean) != self.z_dim or len(self.latents_std) != self.z_dim:
            problems.append(
                f"latents_mean/latents_std have {len(self.latents_mean)}/{len(self.latents_std)} values, "
                f"z_dim={self.z_dim}"
            )
        if any(s <= 0 for s in self.latents_std):
            problems.append("latents_std values must be positive")
        if problems:
            raise ValueError("invalid VAEConfig: " + "; ".join(problems))

    @property
    def spatial_factor(self) -> int:
        """Video pixels per latent pixel along H and W (8 for Wan 2.1)."""
        return 2 ** (len(self.dim_mult) - 1)

    @property
    def temporal_factor(self) -> int:
        """Video frames per latent frame after the first (4 for Wan 2.1): F = factor × (T − 1) + 1."""
        return 2 ** sum(self.temporal_downsample)

    def replace(self, **changes) -> VAEConfig:
        return replace(self, **changes)


VAE_PRESETS: dict[str, VAEConfig] = {
    # The released Wan 2.1 VAE (also the VAE of ChronoEdit-14B).
    "wan21": VAEConfig(),
    # Random-weight demo / test model: same levels and latent channels, 8 base channels, 1 block per level.
    "tiny": VAEConfig(base_dim=8, num_res_blocks=1),
    # ChronoEdit-Toy: 16 base channels, 1 block per level (2.6M parameters); its latent statistics are measured
    # on the toy world after training (tools/train_toy_vae.py writes them into the checkpoint's config).
    "toy": VAEConfig(base_dim=16, num_res_blocks=1),
}


__all__ = ["VAE_PRESETS", "WAN21_LATENTS_MEAN", "WAN21_LATENTS_STD", "VAEConfig"]
