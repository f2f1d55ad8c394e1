"""The ChronoEdit video diffusion transformer (Wan 2.1 I2V architecture with the temporal RoPE skip)."""

from chronoedit.models.dit.config import DIT_PRESETS, DiTConfig
from chronoedit.models.dit.model import ChronoEditDiT, ContextCache
from chronoedit.models.dit.rope import temporal_positions

__all__ = ["DIT_PRESETS", "ChronoEditDiT", "ContextCache", "DiTConfig", "temporal_positions"]
