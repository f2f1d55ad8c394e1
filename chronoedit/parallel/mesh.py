"""The process groups of a :class:`~chronoedit.parallel.config.ParallelConfig` mesh.

Rank layout: ``rank = ((d·C + c)·R + r)·U + u`` (dp outermost, ulysses innermost: the all-to-all, the heaviest
exchange, stays between neighbouring ranks). Sequence-parallel rank ``s = r·U + u`` holds the ``s``-th slice
of the video tokens, so a ulysses group gathers one contiguous ring block.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch.distributed as dist

from chronoedit.parallel.config import ParallelConfig


@dataclass(frozen=True)
class ParallelMesh:
    """This rank's coordinates and the groups it belongs to (None: a group of one, nothing to exchange)."""

    sizes: ParallelConfig
    dp_rank: int = 0
    cfg_rank: int = 0
    ring_rank: int = 0
    ulysses_rank: int = 0
    ulysses_group: dist.ProcessGroup | None = None
    ring_group: dist.ProcessGroup | None = None
    sequence_group: dist.ProcessGroup | None = None  # ring × ulysses: the ranks sharing one token sequence
    cfg_group: dist.ProcessGroup | None = None

    @property
    def sequence_rank(self) -> int:
        return self.ring_rank * self.sizes.ulysses + self.ulysses_rank

    @property
    def writes_outputs(self) -> bool:
        """The one rank of each dp group that writes its edits' outputs."""
        return self.cfg_rank == 0 and self.sequence_rank == 0


def _rank(pc: ParallelConfig, d: int, c: int, r: int, u: int) -> int:
    return ((d * pc.cfg + c) * pc.ring + r) * pc.ulysses + u


def _subgroups(pc: ParallelConfig, vary: str) -> list[list[int]]:
    """Every group of ranks that differ only in the mesh axes ``vary`` (a string of 'd', 'c', 'r', 'u')."""
    sizes = {"d": pc.dp, "c": pc.cfg, "r": pc.ring, "u": pc.ulysses}
    fixed = [a for a in "dcru" if a not in vary]
    groups = []
    for fix in itertools.product(*(range(sizes[a]) for a in fixed)):
        coords = dict(zip(fixed, fix))
        ranks = []
        for var in itertools.product(*(range(sizes[a]) for a in vary)):
            coords.update(zip(vary, var))
            ranks.append(_rank(pc, coords["d"], coords["c"], coords["r"], coords["u"]))
        groups.append(sorted(ranks))
    return groups


def build_mesh(pc: ParallelConfig) -> ParallelMesh:
    """This rank's :class:`ParallelMesh`; every rank must call it (group creation is collective). One process
    (no process group) gets the trivial mesh."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return ParallelMesh(pc)
    rank = dist.get_rank()
    u = rank % pc.ulysses
    r = rank // pc.ulysses % pc.ring
    c = rank // (pc.ulysses * pc.ring) % pc.cfg
    d = rank // (pc.ulysses * pc.ring * pc.cfg)
    groups = {}
    for name, vary, size in (("ulysses", "u", pc.ulysses), ("ring", "r", pc.ring), ("sequence", "ru", pc.sequence),
                             ("cfg", "c", pc.cfg)):  # fmt: skip
        groups[name] = dist.new_subgroups_by_enumeration(_subgroups(pc, vary))[0] if size > 1 else None
    return ParallelMesh(
        pc,
        dp_rank=d,
        cfg_rank=c,
        ring_rank=r,
        ulysses_rank=u,
        ulysses_group=groups["ulysses"],
        ring_group=groups["ring"],
        sequence_group=groups["sequence"],
        cfg_group=groups["cfg"],
    )
