"""Typed configuration of the DiT and its presets."""

from __future__ import annotations

from dataclasses import dataclass, replace

TEXT_LEN = 512  # UMT5 tokens the DiT was trained with (text context is zero-padded to this length)
IMAGE_TOKENS = 257  # CLIP ViT-H/14 at 224²: 1 class token + 16×16 patches


@dataclass
class DiTConfig:
    """Architecture of the ChronoEdit DiT. Field names follow the original Wan 2.1 config."""

    dim: int = 5120  # model width (= num_heads × head_dim)
    num_heads: int = 40
    num_layers: int = 40
    ffn_dim: int = 13824
    in_channels: int = 36  # 16 noisy latent + 4 mask + 16 condition latent channels
    out_channels: int = 16
    patch_size: tuple[int, int, int] = (1, 2, 2)  # (t, h, w)
    text_dim: int = 4096  # UMT5-XXL hidden size
    text_len: int = TEXT_LEN
    image_dim: int | None = 1280  # CLIP hidden size; None = no image cross-attention
    freq_dim: int = 256  # sinusoidal timestep embedding size
    eps: float = 1e-6
    qk_norm: bool = True  # RMSNorm on q and k across all heads
    cross_attn_norm: bool = True  # affine LayerNorm before cross-attention
    rope_theta: float = 10000.0
    rope_max_seq_len: int = 1024  # positions available on each RoPE axis
    rope_temporal_skip_len: int = 8  # with 2 latent frames, temporal positions are {0, skip-1}
    block: str = "wan"  # a key of chronoedit.models.dit.layers.DIT_BLOCKS (register_block adds variants)

    def __post_init__(self) -> None:
        self.patch_size = tuple(int(p) for p in self.patch_size)
        problems = []
        if self.dim <= 0 or self.num_heads <= 0 or self.dim % self.num_heads:
            problems.append(f"dim={self.dim} must be a positive multiple of num_heads={self.num_heads}")
        elif self.head_dim % 2:
            problems.append(f"head_dim={self.head_dim} must be even for RoPE")
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            problems.append(f"patch_size={self.patch_size} must be three positive ints")
        for name in ("num_layers", "ffn_dim", "in_channels", "out_channels", "text_dim", "text_len", "freq_dim"):
            if getattr(self, name) <= 0:
                problems.append(f"{name}={getattr(self, name)} must be positive")
        if self.freq_dim % 2:
            problems.append(f"freq_dim={self.freq_dim} must be even")
        if self.image_dim is not None and self.image_dim <= 0:
            problems.append(f"image_dim={self.image_dim} must be positive or None")
        if not 1 <= self.rope_temporal_skip_len <= self.rope_max_seq_len:
            problems.append(
                f"rope_temporal_skip_len={self.rope_temporal_skip_len} must be in [1, rope_max_seq_len="
                f"{self.rope_max_seq_len}]"
            )
        if problems:
            raise ValueError("invalid DiTConfig: " + "; ".join(problems))

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def rope_axes_dims(self) -> tuple[int, int, int]:
        """Head-dim channels given to the (t, h, w) RoPE axes: d−4⌊d/6⌋, 2⌊d/6⌋, 2⌊d/6⌋."""
        d = self.head_dim
        return d - 4 * (d // 6), 2 * (d // 6), 2 * (d // 6)

    def replace(self, **changes) -> DiTConfig:
        return replace(self, **changes)


DIT_PRESETS: dict[str, DiTConfig] = {
    # The released ChronoEdit-14B (Wan 2.1 I2V 14B 720p architecture).
    "chronoedit_14b": DiTConfig(),
    # Random-weight demo / test model: 2 layers, width 64, full-size interfaces shrunk.
    "tiny": DiTConfig(
        dim=64,
        num_heads=2,
        num_layers=2,
        ffn_dim=128,
        text_dim=32,
        image_dim=48,
        freq_dim=32,
    ),
    # ChronoEdit-Toy, trained from scratch on the toy world (make toy): 6 blocks of width 256 (7.8M
    # parameters); prompts of the grammar are at most 12 tokens, so the text is padded to 16, not 512.
    "toy": DiTConfig(
        dim=256,
        num_heads=4,
        num_layers=6,
        ffn_dim=1024,
        text_dim=64,
        image_dim=64,
        freq_dim=64,
        text_len=16,
    ),
}


__all__ = ["DIT_PRESETS", "IMAGE_TOKENS", "TEXT_LEN", "DiTConfig"]
