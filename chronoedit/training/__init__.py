"""Flow-matching fine-tuning of the ChronoEdit DiT (LoRA or full), on one process or many (FSDP2).

config (typed schema) → data (pre-encoded examples, deterministic batch plan) → objective (rectified flow) →
model (built on meta, wrapped from outside) → trainer (loop, logging) → checkpointing (atomic, exact resume) →
export (PEFT LoRA or full weights).
"""

from chronoedit.training.config import TrainConfig

__all__ = ["TrainConfig"]
