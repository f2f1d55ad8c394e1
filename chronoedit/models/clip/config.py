"""Typed configuration of the CLIP vision tower and its presets."""

from __future__ import annotations

from dataclasses import dataclass, replace

ACTIVATIONS = ("gelu", "quick_gelu")  # exact (erf) GELU; x·sigmoid(1.702x) of the original OpenAI CLIP


@dataclass
class CLIPVisionConfig:
    """Architecture of a CLIP ViT image encoder, of which we run all blocks but the last.

    ``num_layers`` counts the blocks in the checkpoint; the tower builds the first ``num_layers − 1`` and returns
    their output — the penultimate hidden states (transformers' ``hidden_states[-2]``), which ChronoEdit uses as
    image tokens. The last block, the post-norm and the projection are not needed.
    """

    dim: int = 1280  # hidden_size
    ffn_dim: int = 5120  # intermediate_size
    num_heads: int = 16
    num_layers: int = 32  # blocks in the checkpoint (num_hidden_layers)
    patch_size: int = 14
    image_size: int = 224  # square input side
    num_channels: int = 3
    activation: str = "gelu"  # one of ACTIVATIONS (transformers' hidden_act)
    eps: float = 1e-5  # LayerNorm epsilon

    def __post_init__(self) -> None:
        problems = []
        if self.dim <= 0 or self.num_heads <= 0 or self.dim % self.num_heads:
            problems.append(f"dim={self.dim} must be a positive multiple of num_heads={self.num_heads}")
        for name in ("ffn_dim", "num_layers", "patch_size", "num_channels"):
            if getattr(self, name) <= 0:
                problems.append(f"{name}={getattr(self, name)} must be positive")
        if self.patch_size > 0 and (self.image_size <= 0 or self.image_size % self.patch_size):
            problems.append(f"image_size={self.image_size} must be a positive multiple of patch_size={self.patch_size}")
        if self.activation not in ACTIVATIONS:
            problems.append(f"activation={self.activation!r} must be one of {ACTIVATIONS}")
        if self.eps <= 0:
            problems.append(f"eps={self.eps} must be positive")
        if problems:
            raise ValueError("invalid CLIPVisionConfig: " + "; ".join(problems))

    @property
    def num_blocks(self) -> int:
        """Blocks the tower builds and runs: all but the last."""
        return self.num_layers - 1

    @property
    def num_tokens(self) -> int:
        """Output tokens: the class token and one per patch (257 for ViT-H/14 at 224²)."""
        return 1 + (self.image_size // self.patch_size) ** 2

    def replace(self, **changes) -> CLIPVisionConfig:
        return replace(self, **changes)


CLIP_PRESETS: dict[str, CLIPVisionConfig] = {
    # The image encoder of ChronoEdit / Wan 2.1 I2V: open-clip XLM-RoBERTa ViT-H/14 vision tower.
    "vit_h_14": CLIPVisionConfig(),
    # Random-weight test model: 3 checkpoint layers (2 run), width 32, 28² input (5 tokens).
    "tiny": CLIPVisionConfig(dim=32, ffn_dim=64, num_heads=2, num_layers=3, patch_size=14, image_size=28),
    # ChronoEdit-Toy: frozen at its seeded random initialisation; 56² input, 17 tokens of width 64.
    "toy": CLIPVisionConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=3, patch_size=14, image_size=56),
}


__all__ = ["ACTIVATIONS", "CLIP_PRESETS", "CLIPVisionConfig"]
