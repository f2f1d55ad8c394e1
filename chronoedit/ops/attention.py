"""Attention kernels behind one signature, selectable by name from a config.

Every backend takes ``q (B, Lq, H, D)``, ``k, v (B, Lk, H, D)`` and returns ``(B, Lq, H, D)``:
no mask, no dropout, softmax scale ``1/sqrt(D)`` (the DiT attends to zero-padded text without a mask,
as the weights were trained). Add a kernel by adding a function to ``ATTENTION_BACKENDS`` here (then
``runtime.attention=<name>``); :func:`chronoedit.parallelize.apply_attention` installs one in a built model.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

AttentionFn = Callable[[Tensor, Tensor, Tensor], Tensor]


def sdpa_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient / math, as torch picks)."""
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, L, D)
    return F.scaled_dot_product_attention(q, k, v).transpose(1, 2)  # (B, Lq, H, D)


def math_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Explicit softmax(q kᵀ/√D) v with fp32 scores: slow, but a readable reference for new kernels."""
    scores = torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float()) / math.sqrt(q.shape[-1])
    probs = scores.softmax(dim=-1)
    return torch.einsum("bhqk,bkhd->bqhd", probs, v.float()).to(q.dtype)


def _flash_attn_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """FlashAttention 2/3 from the optional ``flash_attn`` package (CUDA, fp16/bf16 only)."""
    try:
        from flash_attn import flash_attn_func  # optional extra, not a dependency
    except ImportError as e:
        raise RuntimeError("attention backend 'flash_attn' needs the optional package flash-attn") from e
    return flash_attn_func(q, k, v)


ATTENTION_BACKENDS: dict[str, AttentionFn] = {
    "sdpa": sdpa_attention,
    "math": math_attention,
    "flash_attn": _flash_attn_attention,
}


def get_attention(name: str) -> AttentionFn:
    """The attention function registered under ``name``; a ValueError lists the known names."""
    if name not in ATTENTION_BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; known: {sorted(ATTENTION_BACKENDS)}")
    return ATTENTION_BACKENDS[name]
