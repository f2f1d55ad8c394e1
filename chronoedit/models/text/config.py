"""Typed configuration of the UMT5 text encoder and its presets."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass
class UMT5Config:
    """Architecture of the UMT5 encoder (field names follow the original Wan 2.1 T5 code)."""

    vocab_size: int = 256384
    dim: int = 4096  # model width (transformers: d_model)
    ffn_dim: int = 10240  # gated-GELU hidden width (d_ff)
    num_heads: int = 64
    head_dim: int = 64  # per-head width (d_kv); num_heads × head_dim need not equal dim
    num_layers: int = 24
    num_buckets: int = 32  # relative-position buckets, half for each direction (bidirectional)
    max_distance: int = 128  # distances ≥ this share the last bucket
    eps: float = 1e-6  # RMS norm epsilon

    def __post_init__(self) -> None:
        problems = []
        for name in ("vocab_size", "dim", "ffn_dim", "num_heads", "head_dim", "num_layers"):
            if getattr(self, name) <= 0:
                problems.append(f"{name}={getattr(self, name)} must be positive")
        # bidirectional: num_buckets/2 per direction, of which half exact and half log-spaced up to max_distance
        if self.num_buckets < 4 or self.num_buckets % 2:
            problems.append(f"num_buckets={self.num_buckets} must be even and ≥ 4")
        elif self.max_distance <= self.num_buckets // 4:
            problems.append(f"max_distance={self.max_distance} must exceed num_buckets/4={self.num_buckets // 4}")
        if self.eps <= 0:
            problems.append(f"eps={self.eps} must be positive")
        if problems:
            raise ValueError("invalid UMT5Config: " + "; ".join(problems))

    @property
    def inner_dim(self) -> int:
        return self.num_heads * self.head_dim

    def replace(self, **changes) -> UMT5Config:
        return replace(self, **changes)


UMT5_PRESETS: dict[str, UMT5Config] = {
    # google/umt5-xxl encoder, as in ChronoEdit's text_encoder/ (5.7B parameters).
    "umt5_xxl": UMT5Config(),
    # Random-weight test model: 2 layers, width 32, vocabulary of the test tokenizer (tests/fixtures_text.py).
    "tiny": UMT5Config(vocab_size=1024, dim=32, ffn_dim=64, num_heads=4, head_dim=8, num_layers=2),
    # ChronoEdit-Toy: frozen at its seeded random initialisation, on the toy grammar's tokenizer (384 ids).
    "toy": UMT5Config(vocab_size=384, dim=64, ffn_dim=128, num_heads=2, head_dim=32, num_layers=2),
}


__all__ = ["UMT5_PRESETS", "UMT5Config"]
