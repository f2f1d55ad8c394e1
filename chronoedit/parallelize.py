"""Everything applied to a model from the outside: activation checkpointing, FSDP2, compile.

The model files contain no distributed code; training and inference call these on an unchanged model.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn


def _blocks(model: nn.Module) -> nn.ModuleList:
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList):
        raise ValueError(f"{type(model).__name__} has no `blocks` ModuleList to apply per-block wrappers to")
    return blocks


def apply_activation_checkpointing(model: nn.Module, blocks: bool | Iterable[int] = True) -> nn.Module:
    """Recompute the activations of the chosen blocks in the backward pass (all, none, or a list of indices)."""
    layers = _blocks(model)
    chosen = set(range(len(layers))) if blocks is True else set() if blocks is False else set(blocks)
    bad = sorted(i for i in chosen if not 0 <= i < len(layers))
    if bad:
        raise ValueError(f"activation checkpointing block indices {bad} out of range [0, {len(layers)})")
    for i, block in enumerate(layers):
        block.grad_checkpoint = i in chosen
    return model
