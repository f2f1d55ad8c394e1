"""A DiT run by several ranks: the video tokens split over the sequence ranks, the CFG batch over the cfg ranks.

The wrapped :class:`~chronoedit.models.dit.model.ChronoEditDiT` is unchanged; its forward stages are run here:
embed (every rank, whole inputs) → pad the tokens to a multiple of the sequence ranks, keep this rank's slice
and its RoPE rows → the blocks (self-attention exchanges through :class:`SequenceParallelAttention`;
cross-attention is local queries against the whole text/image context, no exchange) → the head on the slice →
all-gather the head outputs, drop the padding → unpatchify. The sharding is recomputed from ``x``'s shape at
every call, so the reasoning drop (8 → 2 latent frames) re-shards by itself.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from chronoedit.models.dit.layers import SelfAttention
from chronoedit.models.dit.model import ChronoEditDiT
from chronoedit.parallel.attention import SequenceParallelAttention
from chronoedit.parallel.mesh import ParallelMesh


def all_gather_cat(x: Tensor, group: dist.ProcessGroup, dim: int) -> Tensor:
    """The ``x`` of every rank of ``group`` concatenated along ``dim`` in rank order (equal shapes)."""
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat(parts, dim=dim)


class SequenceParallelDiT(nn.Module):
    """``forward`` has the DiT's signature and returns the whole velocity on every rank."""

    def __init__(self, dit: ChronoEditDiT, mesh: ParallelMesh) -> None:
        super().__init__()
        self.dit, self.mesh = dit, mesh
        self.attention: SequenceParallelAttention | None = None
        if mesh.sequence_group is not None:
            layers = [m for m in dit.modules() if isinstance(m, SelfAttention)]
            if not layers:
                raise ValueError(f"{type(dit).__name__} has no SelfAttention layers to run sequence-parallel")
            self.attention = SequenceParallelAttention(mesh, layers[0].attn_fn)
            for layer in layers:  # only self-attention: cross-attention keeps the local kernel
                layer.attn_fn = self.attention

    @property
    def cfg(self):
        return self.dit.cfg

    @property
    def blocks(self) -> nn.ModuleList:  # for chronoedit.parallelize.apply_fsdp (not a second registration)
        return self.dit.blocks

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        context: Tensor,
        clip_tokens: Tensor | None = None,
        context_lens: Tensor | None = None,
        cache=None,
    ) -> Tensor:
        self.dit.check_inputs(x, t, context, clip_tokens, context_lens)
        m, b = self.mesh, x.shape[0]
        split = m.cfg_group is not None and b % m.sizes.cfg == 0  # [cond; uncond]: one half per cfg rank
        if not split:  # (no guidance: every cfg rank computes the whole batch)
            return self._sequence_forward(x, t, context, clip_tokens, context_lens, cache)
        t = t.reshape(-1).expand(b)
        args = [
            a if a is None else a.chunk(m.sizes.cfg)[m.cfg_rank] for a in (x, t, context, clip_tokens, context_lens)
        ]
        return all_gather_cat(
            self._sequence_forward(*args, cache), m.cfg_group, dim=0
        )  # combined by the guidance closure

    def _sequence_forward(
        self, x: Tensor, t: Tensor, context: Tensor, clip_tokens: Tensor | None, context_lens: Tensor | None, cache
    ) -> Tensor:
        dit, m = self.dit, self.mesh
        grid = dit.token_grid(x)
        if cache is None:
            tokens, e, e0, ctx, img = dit.embed(x, t, context, clip_tokens, context_lens)  # tokens (B, L, D)
            rope = dit.rope(grid, x.device)  # (L, Dh/2)
        else:  # a model.ContextCache: the context's K/V and the RoPE table from earlier steps (the cfg half's own)
            (tokens, e, e0), img = dit.embed_tokens(x, t), None
            ctx, rope = cache.kv(dit, context, clip_tokens, context_lens), cache.rope(dit, grid, x.device)
        if m.sequence_group is None:
            return dit.unpatchify(dit.head(dit.run_blocks(tokens, e0, ctx, img, rope), e), grid)
        n, length = m.sizes.sequence, tokens.shape[1]
        per = -(-length // n)  # tokens per rank; the last ranks' slices end in zero padding
        pad = per * n - length
        if pad:
            tokens = torch.cat([tokens, tokens.new_zeros(tokens.shape[0], pad, tokens.shape[2])], dim=1)
            rope = torch.cat([rope, rope.new_ones(pad, rope.shape[1])], dim=0)  # identity rotations
        mine = slice(m.sequence_rank * per, (m.sequence_rank + 1) * per)
        with self.attention.tokens(length):
            local = dit.run_blocks(tokens[:, mine], e0, ctx, img, rope[mine])  # (B, per, D)
        out = all_gather_cat(dit.head(local, e), m.sequence_group, dim=1)[:, :length]  # (B, L, pt·ph·pw·C_out)
        return dit.unpatchify(out, grid)
