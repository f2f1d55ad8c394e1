"""The CLIP ViT vision tower up to its penultimate block: the image tokens ChronoEdit conditions on.

Shapes: B images, C channels, S image side, P patch side, N = 1 + (S/P)² tokens, D width, H heads.
LayerNorms are computed in fp32 (their weights stay fp32 in a bf16 model, see ``keep_fp32``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from chronoedit.models.clip.config import CLIPVisionConfig
from chronoedit.models.norms import LayerNorm
from chronoedit.ops.attention import AttentionFn, sdpa_attention


def quick_gelu(x: Tensor) -> Tensor:
    return x * torch.sigmoid(1.702 * x)


class Attention(nn.Module):
    """Multi-head self-attention with biases, softmax scale 1/√(D/H), no mask."""

    def __init__(self, dim: int, num_heads: int, attn_fn: AttentionFn) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.attn_fn = attn_fn
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: Tensor) -> Tensor:
        """x (B, N, D) -> (B, N, D)."""
        q, k, v = (rearrange(p(x), "b n (h d) -> b n h d", h=self.num_heads) for p in (self.q, self.k, self.v))
        return self.o(rearrange(self.attn_fn(q, k, v), "b n h d -> b n (h d)"))


class MLP(nn.Module):
    def __init__(self, dim: int, ffn_dim: int, activation: str) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, dim)
        self.act = quick_gelu if activation == "quick_gelu" else F.gelu

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, cfg: CLIPVisionConfig, attn_fn: AttentionFn) -> None:
        super().__init__()
        self.norm1 = LayerNorm(cfg.dim, eps=cfg.eps)
        self.attn = Attention(cfg.dim, cfg.num_heads, attn_fn)
        self.norm2 = LayerNorm(cfg.dim, eps=cfg.eps)
        self.mlp = MLP(cfg.dim, cfg.ffn_dim, cfg.activation)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class CLIPVisionTower(nn.Module):
    """``pixels (B, C, S, S)`` (normalised, see :class:`ImagePreprocessor`) -> ``(B, N, D)`` penultimate tokens."""

    def __init__(self, cfg: CLIPVisionConfig, attn_fn: AttentionFn = sdpa_attention) -> None:
        super().__init__()
        self.cfg = cfg
        p = cfg.patch_size
        self.patch_embedding = nn.Conv2d(cfg.num_channels, cfg.dim, kernel_size=p, stride=p, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(cfg.dim))
        self.position_embedding = nn.Parameter(torch.zeros(cfg.num_tokens, cfg.dim))
        self.pre_norm = LayerNorm(cfg.dim, eps=cfg.eps)
        self.blocks = nn.ModuleList(Block(cfg, attn_fn) for _ in range(cfg.num_blocks))

    @staticmethod
    def keep_fp32(name: str) -> bool:
        """Whether parameter ``name`` stays fp32 when the model is stored in a lower precision (the norms)."""
        return name.rpartition(".")[0].rpartition(".")[2] in ("pre_norm", "norm1", "norm2")  # the owning module's name

    def check_inputs(self, pixels: Tensor) -> None:
        cfg = self.cfg
        want = (cfg.num_channels, cfg.image_size, cfg.image_size)
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != want or pixels.shape[0] == 0:
            raise ValueError(f"pixels must be (B, {', '.join(map(str, want))}), got shape {tuple(pixels.shape)}")
        if not pixels.is_floating_point():
            raise ValueError(f"pixels must be a normalised float tensor, got {pixels.dtype}")

    def forward(self, pixels: Tensor) -> Tensor:
        """pixels (B, C, S, S) -> (B, N, D)."""
        self.check_inputs(pixels)
        w = self.patch_embedding.weight
        patches = rearrange(self.patch_embedding(pixels.to(w.dtype)), "b d h w -> b (h w) d")  # (B, N−1, D)
        cls = self.class_embedding.to(w.dtype).expand(patches.shape[0], 1, -1)  # (B, 1, D)
        x = torch.cat([cls, patches], dim=1) + self.position_embedding.to(w.dtype)  # (B, N, D)
        x = self.pre_norm(x)
        for block in self.blocks:
            x = block(x)
        return x


__all__ = ["CLIPVisionTower"]
