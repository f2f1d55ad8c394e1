"""Checkpoints: declarative key maps, a safetensors reader, strict lean loading, formats, LoRA."""

from chronoedit.checkpoint.errors import CheckpointError
from chronoedit.checkpoint.keymap import KeyMap

__all__ = ["CheckpointError", "KeyMap"]
