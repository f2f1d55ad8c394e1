"""Pure tensor operations shared by the models: attention, rotary embeddings, norms, modulation."""

from chronoedit.ops.attention import ATTENTION_BACKENDS, get_attention
from chronoedit.ops.norm import fp32_layer_norm, gated_residual, modulate, rms_norm
from chronoedit.ops.rope import apply_rope, rope_angles, rope_frequencies, rope_table

__all__ = [
    "ATTENTION_BACKENDS",
    "apply_rope",
    "fp32_layer_norm",
    "gated_residual",
    "get_attention",
    "modulate",
    "rms_norm",
    "rope_angles",
    "rope_frequencies",
    "rope_table",
]
