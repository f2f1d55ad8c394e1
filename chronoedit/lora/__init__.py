"""LoRA: one in-memory form (:class:`LoRAWeights` per target module), applied three ways —
fused into the weights (and unfused back bit-exactly), as runtime adapters, or trained (:class:`LoRALinear`).
File formats (PEFT/diffusers, original Wan, kohya/musubi, DiffSynth) are read by ``chronoedit.lora.formats``.
"""

from chronoedit.lora.fuse import FusedLoRA, fuse_lora
from chronoedit.lora.layers import LoRALinear, add_adapter, lora_parameters, remove_adapters
from chronoedit.lora.weights import LoRAWeights, check_targets

__all__ = [
    "FusedLoRA",
    "LoRALinear",
    "LoRAWeights",
    "add_adapter",
    "check_targets",
    "fuse_lora",
    "lora_parameters",
    "remove_adapters",
]
