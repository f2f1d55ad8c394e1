"""Everything applied to a model from the outside: the attention kernel, activation checkpointing, FSDP2, compile.

The model files contain no distributed code; training and inference call these on an unchanged model.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
import torch.utils.checkpoint
from torch import nn

from chronoedit.ops.attention import AttentionFn, get_attention

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh


def _blocks(model: nn.Module) -> nn.ModuleList:
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList):
        raise ValueError(f"{type(model).__name__} has no `blocks` ModuleList to apply per-block wrappers to")
    return blocks


def apply_attention(model: nn.Module, attention: str | AttentionFn) -> nn.Module:
    """Install an attention kernel (a name of ``ATTENTION_BACKENDS`` or a function with its signature) in every
    attention layer of ``model`` (the layers that take an ``attn_fn``): DiT, CLIP, or a wrapper of one."""
    fn = get_attention(attention) if isinstance(attention, str) else attention
    for module in model.modules():
        if hasattr(module, "attn_fn"):
            module.attn_fn = fn
    return model


class CheckpointedBlock(nn.Module):
    """A block whose activations are recomputed in the backward pass.

    It shares the wrapped block's parameter, buffer and submodule tables, so parameter names, state dicts, FSDP
    sharding and LoRA injection see exactly the block (no ``_checkpoint_wrapped_module`` in any name)."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self._parameters, self._buffers, self._modules = block._parameters, block._buffers, block._modules
        object.__setattr__(self, "inner", block)  # not registered: its tensors are already this module's

    def forward(self, *args: Any) -> Any:
        if not torch.is_grad_enabled():
            return self.inner(*args)
        return torch.utils.checkpoint.checkpoint(self.inner, *args, use_reentrant=False)


def apply_activation_checkpointing(model: nn.Module, blocks: bool | Iterable[int] = True) -> nn.Module:
    """Wrap the chosen blocks (all, none, or a list of indices) in :class:`CheckpointedBlock`."""
    layers = _blocks(model)
    chosen = set(range(len(layers))) if blocks is True else set() if blocks is False else set(blocks)
    bad = sorted(i for i in chosen if not 0 <= i < len(layers))
    if bad:
        raise ValueError(f"activation checkpointing block indices {bad} out of range [0, {len(layers)})")
    for i in sorted(chosen):
        if not isinstance(layers[i], CheckpointedBlock):
            layers[i] = CheckpointedBlock(layers[i])
    return model


def apply_fsdp(
    model: nn.Module,
    mesh: DeviceMesh,
    *,
    param_dtype: torch.dtype | None = None,
    reduce_dtype: torch.dtype | None = torch.float32,
    reshard_after_forward: bool = True,
) -> nn.Module:
    """FSDP2: ``fully_shard`` each block, then the root (the embeddings and the head), over ``mesh``.

    ``mesh`` is 1-D (shard over every rank) or 2-D ``(replicate, shard)`` (HSDP). ``param_dtype`` is the dtype the
    parameters are all-gathered and computed in (None: as stored, e.g. fp32 master weights under autocast);
    gradients are reduce-scattered in ``reduce_dtype``. Every trainable parameter of a block must share one dtype
    (FSDP's rule); frozen ones may differ (bf16 base weights next to fp32 LoRA and fp32 islands).
    The last block is not resharded after forward: backward needs it at once.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    layers = _blocks(model)
    for i, block in enumerate(layers):
        fully_shard(block, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward and i < len(layers) - 1)
    fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward)
    return model


def apply_compile(model: nn.Module, **compile_kwargs) -> nn.Module:
    """``torch.compile`` each block in place (parameter names unchanged; the block loop stays in Python)."""
    for block in _blocks(model):
        block.compile(**compile_kwargs)
    return model
