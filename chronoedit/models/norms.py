"""Norm layers shared by the transformers (DiT, UMT5, CLIP): computed in fp32, output in the input dtype.

(The VAE normalises over channels of a video, a different operation: ``chronoedit.models.vae.layers.RMSNorm``.)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from chronoedit.ops.norm import fp32_layer_norm, rms_norm


class LayerNorm(nn.LayerNorm):
    """LayerNorm over the last dim in fp32; optionally without affine parameters."""

    def forward(self, x: Tensor) -> Tensor:
        return fp32_layer_norm(x, self.weight, self.bias, self.eps)


class RMSNorm(nn.Module):
    """x / rms(x) over the last dim in fp32, times a learned scale (no mean subtraction, no bias)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return rms_norm(x, self.weight, self.eps)
