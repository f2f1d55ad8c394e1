"""Exponential moving average of the trainable parameters (sharded like them under FSDP: elementwise on shards)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn


class EMA:
    """``shadow ← decay · shadow + (1 − decay) · param`` after every optimizer step, in fp32."""

    def __init__(self, params: Mapping[str, nn.Parameter], decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay={decay} must be in (0, 1)")
        self.decay = decay
        self.shadow: dict[str, Tensor] = {n: p.detach().float().clone() for n, p in params.items()}

    @torch.no_grad()
    def update(self, params: Mapping[str, nn.Parameter]) -> None:
        for name, p in params.items():
            self.shadow[name].lerp_(p.detach().float(), 1.0 - self.decay)

    def state_dict(self) -> dict[str, Tensor]:
        return dict(self.shadow)

    @torch.no_grad()
    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        missing = sorted(set(self.shadow) - set(state))
        if missing:
            raise ValueError(f"EMA state lacks {missing[:8]}")
        for name, t in self.shadow.items():
            t.copy_(state[name])
