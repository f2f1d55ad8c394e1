"""The ``parallel.*`` keys of an edit: how ``torchrun`` processes split one DiT evaluation, and their checks.

N = ulysses · ring · cfg · dp processes form a mesh (dp outermost, ulysses innermost); every factor is 1 by
default, so one plain process runs exactly as without this package.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass
class ParallelConfig:
    ulysses: int = 1  # sequence parallel, all-to-all: video tokens split over U ranks, heads exchanged (H % U == 0)
    ring: int = 1  # sequence parallel, ring: K/V blocks circulate over R ranks (any head count)
    cfg: int = 1  # 2: the conditional and unconditional DiT passes on two rank groups, combined once per call
    dp: int = 1  # data parallel over the edits of a batch file (each group of U·R·C ranks runs its own edits)
    shard_weights: bool = False  # FSDP2-shard the DiT over all ranks (gathered block by block); else each rank holds it

    @property
    def size(self) -> int:
        """Processes this mesh needs."""
        return self.ulysses * self.ring * self.cfg * self.dp

    @property
    def sequence(self) -> int:
        """Ranks the video tokens are split over."""
        return self.ulysses * self.ring


def launched_world_size() -> int:
    """The number of processes ``torchrun`` started (1 for a plain process)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched_rank() -> int:
    """This process's rank under ``torchrun`` (0 for a plain process)."""
    return int(os.environ.get("RANK", "0"))


def check_parallel(pc: ParallelConfig, world_size: int, num_heads: int | None = None) -> None:
    """A one-line ValueError for a mesh that cannot run: a factor < 1, cfg not 1 or 2, N ≠ U·R·C·dp, or (when
    ``num_heads`` is known) heads not divisible by U. Reads nothing: call it before any weight is loaded."""
    for name in ("ulysses", "ring", "cfg", "dp"):
        value = getattr(pc, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"parallel.{name}={value!r} must be an integer >= 1")
    if pc.cfg > 2:
        raise ValueError(f"parallel.cfg={pc.cfg} must be 1 or 2 (the conditional and the unconditional pass)")
    if world_size != pc.size:
        raise ValueError(
            f"parallel mesh ulysses·ring·cfg·dp = {pc.ulysses}·{pc.ring}·{pc.cfg}·{pc.dp} = {pc.size} processes, "
            f"but {world_size} were started (torchrun --nproc_per_node={pc.size})"
        )
    if pc.shard_weights and pc.dp > 1:
        raise ValueError("parallel.shard_weights=true needs parallel.dp=1 (the dp groups run different edits)")
    if num_heads is not None and num_heads % pc.ulysses:
        raise ValueError(
            f"parallel.ulysses={pc.ulysses} does not divide the DiT's {num_heads} attention heads "
            "(use a divisor, or parallel.ring for the rest)"
        )
