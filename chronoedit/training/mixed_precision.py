"""One process computes as FSDP2 does with ``MixedPrecisionPolicy(param_dtype=…)``, so that the loss curve of a
run does not depend on the number of processes (``precision.fsdp_param=bfloat16``, which ``lora_14b`` and
``full_14b`` use).

Under FSDP2 each ``fully_shard``-ed module (every block, then the root) computes with its parameters cast to
``param_dtype`` — the fp32 islands and the fp32 LoRA masters too — and with its floating inputs cast to it
(``cast_forward_inputs``: the root's latents and timesteps, each block's residual stream, time embedding and
text states); the gradients, computed in ``param_dtype``, are cast back to fp32 and accumulated into the fp32
parameters. One process has no FSDP, so :func:`apply_fsdp_param_dtype` applies the same two casts from the
outside with hooks — the model, its parameter names and its state dict are unchanged:

* before the root's forward every floating parameter of another dtype is replaced, in its module, by a
  ``param_dtype`` copy (a leaf); the fp32 parameter gets the copy's gradient, cast, once it is computed; the
  fp32 parameters are put back when the backward pass ends (or at once when no gradient is recorded), so that
  recomputed (activation-checkpointed) blocks see the same copies their forward saw;
* before the root's and every block's forward their floating inputs are cast, as FSDP does.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.distributed.utils import _apply_to_tensors


def _cast(x: Any, dtype: torch.dtype) -> Any:
    """Floating tensors in (nested) args cast to ``dtype``, over the same containers (tuples, named tuples, lists,
    dicts, dataclasses) as FSDP's ``cast_forward_inputs``, with FSDP's own traversal."""

    def cast(t: Tensor) -> Tensor:
        return t.to(dtype) if torch.is_floating_point(t) and t.dtype != dtype else t

    return _apply_to_tensors(cast, x)


class _Swapped:
    """The parameters of ``model`` replaced by ``dtype`` copies for one forward/backward pass."""

    def __init__(self, model: nn.Module, dtype: torch.dtype) -> None:
        self.model, self.dtype = model, dtype
        self.slots: list[tuple[dict, str, nn.Parameter]] = []  # (module._parameters, name, fp32 parameter)

    @property
    def active(self) -> bool:
        return bool(self.slots)

    def swap_in(self) -> None:
        seen: set[int] = set()
        for module in self.model.modules():
            table = module._parameters
            if id(table) in seen:  # a wrapper sharing its block's table (activation checkpointing)
                continue
            seen.add(id(table))
            for name, p in table.items():
                if p is None or not p.is_floating_point() or p.dtype == self.dtype:
                    continue
                copy = nn.Parameter(p.detach().to(self.dtype), requires_grad=p.requires_grad)
                if p.requires_grad:
                    copy.register_post_accumulate_grad_hook(self._grad_to(p))
                table[name] = copy
                self.slots.append((table, name, p))

    @staticmethod
    def _grad_to(master: nn.Parameter):
        def hook(copy: Tensor) -> None:  # as FSDP's reduce-scatter: the grad in the master's dtype, accumulated
            g = copy.grad.to(master.dtype)
            master.grad = g if master.grad is None else master.grad.add_(g)
            copy.grad = None

        return hook

    def restore(self) -> None:
        for table, name, p in self.slots:
            table[name] = p
        self.slots.clear()


def apply_fsdp_param_dtype(model: nn.Module, dtype: torch.dtype, blocks: nn.ModuleList | None = None) -> nn.Module:
    """Make one process compute ``model`` as ``fully_shard`` with ``MixedPrecisionPolicy(param_dtype=dtype)``
    applied to each of ``blocks`` (default ``model.blocks``) and to the root would (see the module docstring).
    Parameters stay in their own dtype outside a forward/backward pass (optimizer, EMA, checkpoints, export)."""
    blocks = model.blocks if blocks is None else blocks
    swapped = _Swapped(model, dtype)

    def root_pre(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if swapped.active:  # a forward whose backward never ran
            swapped.restore()
        swapped.swap_in()
        return _cast(args, dtype), _cast(kwargs, dtype)

    def root_post(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        outputs = [t for t in (output if isinstance(output, tuple | list) else (output,)) if isinstance(t, Tensor)]
        if not any(t.requires_grad for t in outputs):
            swapped.restore()
            return output

        def at_backward_start(grad: Tensor) -> Tensor:  # put the fp32 parameters back when this backward ends
            torch.autograd.Variable._execution_engine.queue_callback(swapped.restore)
            return grad

        next(t for t in outputs if t.requires_grad).register_hook(at_backward_start)
        return output

    def block_pre(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return _cast(args, dtype), _cast(kwargs, dtype)

    model.register_forward_pre_hook(root_pre, with_kwargs=True)
    model.register_forward_hook(root_post, with_kwargs=True)
    for block in blocks:
        block.register_forward_pre_hook(block_pre, with_kwargs=True)
    return model


__all__ = ["apply_fsdp_param_dtype"]
