"""The UMT5 encoder: token embedding, pre-norm blocks with a relative-position bias each, final RMS norm.

Shapes: B prompts, L tokens, D model width, H heads, Dh head width, F gated-FFN width.
Parameter names are those of the original Wan 2.1 T5 encoder (``models_t5_umt5-xxl-enc-bf16.pth``).

Precision: RMS norms are computed in fp32 (their weights stay fp32 in a bf16 model, see ``keep_fp32``); the
residual stream, projections and attention run in the weights' dtype; attention is not scaled (T5 folds
1/√Dh into the weights) and gets the relative-position bias plus the padding mask as an additive term.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from chronoedit.models.dit.config import TEXT_LEN
from chronoedit.models.norms import RMSNorm
from chronoedit.models.text.config import UMT5Config
from chronoedit.models.text.prompt import clean_prompt
from chronoedit.models.text.tokenizer import Tokenizer


def relative_position_buckets(length: int, num_buckets: int, max_distance: int, device=None) -> Tensor:
    """Bucket of each (query i, key j) offset j − i, bidirectional T5 style; (L, L) int64 in [0, num_buckets).

    Half the buckets per direction (keys after the query use the upper half); in each half, offsets below a
    quarter of ``num_buckets`` get a bucket each, larger ones share log-spaced buckets up to ``max_distance``.
    """
    pos = torch.arange(length, device=device)
    offset = pos[None, :] - pos[:, None]  # (Lq, Lk): key − query
    half = num_buckets // 2
    exact = half // 2
    direction = (offset > 0).long() * half
    dist = offset.abs()
    # log-spaced buckets for dist ≥ exact (float32 arithmetic as in the reference, truncated towards zero)
    log_ratio = torch.log(dist.clamp_min(1).float() / exact) / math.log(max_distance / exact)
    far = (exact + (log_ratio * (half - exact)).long()).clamp_max(half - 1)
    return direction + torch.where(dist < exact, dist, far)


class RelativeBias(nn.Module):
    """One learned scalar per (bucket, head): the additive attention bias of a block."""

    def __init__(self, num_buckets: int, num_heads: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_buckets, num_heads)

    def forward(self, buckets: Tensor) -> Tensor:
        """buckets (L, L) -> bias (1, H, L, L)."""
        return rearrange(self.embedding(buckets), "q k h -> 1 h q k")


class T5Attention(nn.Module):
    """Unscaled multi-head self-attention with an additive bias (relative positions + padding mask)."""

    def __init__(self, dim: int, num_heads: int, head_dim: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        inner = num_heads * head_dim
        self.q, self.k, self.v = (nn.Linear(dim, inner, bias=False) for _ in range(3))
        self.o = nn.Linear(inner, dim, bias=False)

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        """x (B, L, D), bias (B or 1, H, L, L) additive -> (B, L, D)."""
        q, k, v = (rearrange(p(x), "b l (h d) -> b h l d", h=self.num_heads) for p in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=1.0)  # (B, H, L, Dh)
        return self.o(rearrange(out, "b h l d -> b l (h d)"))


class T5FeedForward(nn.Module):
    """Gated tanh-GELU FFN: fc2(fc1(x) · gelu_tanh(gate(x)))."""

    def __init__(self, dim: int, ffn_dim: int) -> None:
        super().__init__()
        self.gate = nn.Sequential(nn.Linear(dim, ffn_dim, bias=False), nn.GELU(approximate="tanh"))
        self.fc1 = nn.Linear(dim, ffn_dim, bias=False)
        self.fc2 = nn.Linear(ffn_dim, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.fc1(x) * self.gate(x))


def _clamp_fp16(x: Tensor) -> Tensor:
    """In fp16, pull ±inf back into range as T5 implementations do (a no-op in other dtypes)."""
    if x.dtype != torch.float16:
        return x
    top = torch.finfo(torch.float16).max
    limit = torch.where(torch.isinf(x).any(), top - 1000, top)
    return torch.clamp(x, -limit, limit)


class T5Block(nn.Module):
    """x + attn(norm1(x)) then x + ffn(norm2(x)); the block owns its relative-position bias table."""

    def __init__(self, cfg: UMT5Config) -> None:
        super().__init__()
        self.norm1 = RMSNorm(cfg.dim, cfg.eps)
        self.attn = T5Attention(cfg.dim, cfg.num_heads, cfg.head_dim)
        self.norm2 = RMSNorm(cfg.dim, cfg.eps)
        self.ffn = T5FeedForward(cfg.dim, cfg.ffn_dim)
        self.pos_embedding = RelativeBias(cfg.num_buckets, cfg.num_heads)

    def forward(self, x: Tensor, buckets: Tensor, pad: Tensor) -> Tensor:
        """x (B, L, D), buckets (L, L), pad (B, 1, 1, L) True at padding keys -> (B, L, D)."""
        bias = self.pos_embedding(buckets).to(x.dtype)  # (1, H, L, L)
        bias = bias.masked_fill(pad, torch.finfo(x.dtype).min)  # (B, H, L, L)
        x = _clamp_fp16(x + self.attn(self.norm1(x), bias))
        return _clamp_fp16(x + self.ffn(self.norm2(x)))


class UMT5Encoder(nn.Module):
    """``ids, mask (B, L)`` -> last hidden state ``(B, L, D)`` after the final norm (transformers'
    ``UMT5EncoderModel(...).last_hidden_state``)."""

    def __init__(self, cfg: UMT5Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.blocks = nn.ModuleList(T5Block(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.dim, cfg.eps)

    @staticmethod
    def keep_fp32(name: str) -> bool:
        """Whether parameter ``name`` stays fp32 when the model is stored in a lower precision (the norms)."""
        return name.rpartition(".")[0].rpartition(".")[2] in ("norm", "norm1", "norm2")  # the owning module's name

    def check_inputs(self, ids: Tensor, mask: Tensor | None) -> None:
        """Raise a ValueError naming the problem, before any compute."""
        if ids.ndim != 2 or ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"ids must be an integer (B, L) tensor, got {ids.dtype} {tuple(ids.shape)}")
        if ids.numel() == 0:
            raise ValueError(f"ids is empty {tuple(ids.shape)}")
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= self.cfg.vocab_size:
            raise ValueError(f"token ids span [{lo}, {hi}], outside the vocabulary [0, {self.cfg.vocab_size})")
        if mask is not None:
            if mask.shape != ids.shape:
                raise ValueError(f"mask shape {tuple(mask.shape)} differs from ids shape {tuple(ids.shape)}")
            empty = (mask == 0).all(dim=1).nonzero().flatten().tolist()
            if empty:
                raise ValueError(f"mask has no tokens in rows {empty}: every prompt needs at least EOS")

    def forward(self, ids: Tensor, mask: Tensor | None = None) -> Tensor:
        """ids (B, L) int, mask (B, L) 1 = token, 0 = padding (None: all tokens) -> (B, L, D)."""
        self.check_inputs(ids, mask)
        length = ids.shape[1]
        x = self.token_embedding(ids)  # (B, L, D)
        buckets = relative_position_buckets(length, self.cfg.num_buckets, self.cfg.max_distance, ids.device)
        if mask is None:
            mask = torch.ones_like(ids)
        pad = (mask == 0)[:, None, None, :]  # (B, 1, 1, L): keys to ignore
        for block in self.blocks:
            x = block(x, buckets, pad)
        return self.norm(x)


@torch.no_grad()
def encode_prompts(
    encoder: UMT5Encoder, tokenizer: Tokenizer, prompts: str | Sequence[str], max_length: int = TEXT_LEN
) -> Tensor:
    """Cleaned prompts -> ``(B, max_length, D)``: each prompt's token states (EOS included), zeros after.

    What the reference pipeline's ``_get_t5_prompt_embeds`` computes, and what the DiT was trained on. The
    encoder runs only up to the longest prompt: with the padding mask, real tokens never see the padding, so
    their states do not depend on how much padding follows.
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    ids, mask = tokenizer([clean_prompt(p) for p in prompts], max_length=max_length)  # (B, max_length)
    used = int(mask.sum(dim=1).max())
    device = encoder.token_embedding.weight.device
    ids, mask = ids[:, :used].to(device), mask[:, :used].to(device)
    states = encoder(ids, mask)  # (B, used, D)
    states = states.masked_fill(mask[..., None] == 0, 0.0)
    return F.pad(states, (0, 0, 0, max_length - used))  # (B, max_length, D)


__all__ = ["T5Block", "UMT5Encoder", "encode_prompts", "relative_position_buckets"]
