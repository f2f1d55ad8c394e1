"""Sequence-parallel self-attention: each rank holds a slice of the video tokens' q, k, v ``(B, Ls, H, Dh)``.

* Ulysses: an all-to-all trades the sequence split for a head split — each rank then attends the whole
  sequence with H/U heads through the ordinary kernel — and a second all-to-all trades back.
* Ring: q stays; the K/V blocks travel round the R ranks (send to the next, receive from the previous, the
  transfer overlapping the block's compute); per block the attention output and its log-sum-exp are computed
  in fp32 and merged online: ``lse = logaddexp(lse_a, lse_b)``, ``o = o_a·e^(lse_a−lse) + o_b·e^(lse_b−lse)``.
* Both (USP): all-to-all inside each ulysses group first (it gathers one contiguous ring block), then the ring.

The token sequence is zero-padded at its end to a multiple of the ranks; padding keys are never attended (they
are cut off the K/V before the kernel / out of each ring block). :class:`SequenceParallelAttention` learns the
real token count from the wrapper for the duration of one DiT forward (:meth:`~SequenceParallelAttention.tokens`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.distributed as dist
from einops import rearrange
from torch import Tensor

from chronoedit.ops.attention import AttentionFn
from chronoedit.parallel.mesh import ParallelMesh


def all_to_all(x: Tensor, group: dist.ProcessGroup, scatter_dim: int, gather_dim: int) -> Tensor:
    """Split ``x`` into ``n`` chunks along ``scatter_dim``, send chunk i to rank i of ``group``, and concatenate
    the chunks received (in rank order) along ``gather_dim``."""
    n = dist.get_world_size(group)
    send = torch.stack(x.chunk(n, dim=scatter_dim)).contiguous()  # (n, ...) chunk i -> rank i
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)
    return torch.cat(recv.unbind(0), dim=gather_dim)


def attention_with_lse(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """softmax(q kᵀ/√Dh) v in fp32 and its log-sum-exp: q (B, Lq, H, Dh), k, v (B, Lk, H, Dh) ->
    out (B, Lq, H, Dh) fp32, lse (B, H, Lq) fp32. The whole score matrix at once: see :func:`blockwise_attention`."""
    scores = torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float()) / math.sqrt(q.shape[-1])
    lse = torch.logsumexp(scores, dim=-1)  # (B, H, Lq)
    probs = torch.exp(scores - lse[..., None])
    return torch.einsum("bhqk,bkhd->bqhd", probs, v.float()), lse


def blockwise_attention(
    q: Tensor, k: Tensor, v: Tensor, q_chunk: int = 1024, k_chunk: int = 4096
) -> tuple[Tensor, Tensor]:
    """:func:`attention_with_lse` with at most ``q_chunk × k_chunk`` scores per head alive at a time (a 14B
    reasoning edit has ~29k tokens: its whole score matrix would not fit), key chunks merged online."""
    outs, lses = [], []
    for qs in q.split(q_chunk, dim=1):
        out = lse = None
        for ks, vs in zip(k.split(k_chunk, dim=1), v.split(k_chunk, dim=1)):
            out, lse = merge_attention(out, lse, *attention_with_lse(qs, ks, vs))
        outs.append(out)
        lses.append(lse)
    return torch.cat(outs, dim=1), torch.cat(lses, dim=2)


def merge_attention(out_a: Tensor | None, lse_a: Tensor | None, out_b: Tensor, lse_b: Tensor) -> tuple[Tensor, Tensor]:
    """Two partial attentions over disjoint key sets -> the attention over their union (online softmax)."""
    if out_a is None:
        return out_b, lse_b
    lse = torch.logaddexp(lse_a, lse_b)  # (B, H, Lq)
    wa = rearrange(torch.exp(lse_a - lse), "b h q -> b q h 1")
    wb = rearrange(torch.exp(lse_b - lse), "b h q -> b q h 1")
    return out_a * wa + out_b * wb, lse


def ring_attention(q: Tensor, k: Tensor, v: Tensor, group: dist.ProcessGroup, valid: int) -> Tensor:
    """Attention of this rank's queries over the K/V blocks of every rank of ``group``; rank i holds the keys
    ``[i·Lb, (i+1)·Lb)`` of a sequence whose first ``valid`` keys are real. q (B, Lq, H, Dh), k, v (B, Lb, H, Dh)."""
    n, me = dist.get_world_size(group), dist.get_rank(group)
    nxt, prv = dist.get_global_rank(group, (me + 1) % n), dist.get_global_rank(group, (me - 1) % n)
    block = k.shape[1]
    kv = torch.stack([k, v]).contiguous()  # (2, B, Lb, H, Dh)
    out = lse = None
    for step in range(n):
        pending, incoming = [], None
        if step < n - 1:  # start passing the block on before computing with it
            incoming = torch.empty_like(kv)
            ops = [dist.P2POp(dist.isend, kv, nxt, group), dist.P2POp(dist.irecv, incoming, prv, group)]
            pending = dist.batch_isend_irecv(ops)
        source = (me - step) % n  # the rank whose block kv is
        real = min(max(valid - source * block, 0), block)  # its keys before the padding
        if real > 0:
            out, lse = merge_attention(out, lse, *blockwise_attention(q, kv[0, :, :real], kv[1, :, :real]))
        for req in pending:
            req.wait()
        if incoming is not None:
            kv = incoming
    return out.to(q.dtype)


class SequenceParallelAttention:
    """The self-attention function of a sequence-parallel DiT: ``(q, k, v)`` of this rank's tokens, as every
    :data:`~chronoedit.ops.attention.AttentionFn`. ``inner``: the kernel the Ulysses path calls on the whole
    (gathered) sequence; the ring path computes its blocks itself (it needs the log-sum-exp)."""

    def __init__(self, mesh: ParallelMesh, inner: AttentionFn) -> None:
        self.mesh, self.inner = mesh, inner
        self._valid: int | None = None

    @contextlib.contextmanager
    def tokens(self, valid: int) -> Iterator[None]:
        """While the wrapper runs the blocks: the sequence has ``valid`` real tokens (the rest is padding)."""
        self._valid = valid
        try:
            yield
        finally:
            self._valid = None

    def __call__(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        if self._valid is None:
            raise RuntimeError("sequence-parallel attention called outside SequenceParallelDiT.forward")
        m = self.mesh
        if m.ulysses_group is not None:  # (B, Ls, H, Dh) -> (B, U·Ls, H/U, Dh): this ring block, some heads
            q, k, v = (all_to_all(t, m.ulysses_group, scatter_dim=2, gather_dim=1) for t in (q, k, v))
        if m.ring_group is not None:
            out = ring_attention(q, k, v, m.ring_group, self._valid)
        else:  # the whole sequence is here: cut the padding keys off
            out = self.inner(q, k[:, : self._valid], v[:, : self._valid])
        if m.ulysses_group is not None:  # back: (B, U·Ls, H/U, Dh) -> (B, Ls, H, Dh)
            out = all_to_all(out, m.ulysses_group, scatter_dim=1, gather_dim=2)
        return out
