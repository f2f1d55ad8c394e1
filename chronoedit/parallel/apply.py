"""Multi-process inference applied from the outside: join the ``torchrun`` process group, then turn a built
:class:`~chronoedit.pipeline.pipeline.EditPipeline` into this rank's part of the mesh.

Every rank loads every model and runs the text encoder, CLIP and the VAE itself (cheap next to the DiT, and no
exchange needed); only the DiT is split. Each rank holds the whole DiT unless ``shard_weights`` (FSDP2 over all
ranks, each block gathered for its forward). Only one rank per dp group writes outputs.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from chronoedit.parallel.config import ParallelConfig, check_parallel
from chronoedit.parallel.dit import SequenceParallelDiT
from chronoedit.parallel.mesh import ParallelMesh, build_mesh


def join_processes(pc: ParallelConfig, device: torch.device) -> torch.device:
    """With several processes: join the process group (gloo on CPU, NCCL on CUDA) and return this rank's device
    (``cuda:LOCAL_RANK``); one plain process: ``device`` unchanged, nothing initialised."""
    if pc.size == 1:
        return device
    from chronoedit.training.distributed import init_world

    return init_world(device=str(device)).device


def parallelize_pipeline(pipe, pc: ParallelConfig):
    """Install this rank's part of the ``pc`` mesh in ``pipe`` (returned): the DiT wrapped in
    :class:`SequenceParallelDiT` (FSDP2-sharded with ``shard_weights``), one doubled CFG batch when the cfg axis
    splits it, progress bars on rank 0 only. One process: ``pipe`` unchanged."""
    if pc.size == 1:
        return pipe
    dit = pipe.c.dit
    check_parallel(pc, dist.get_world_size(), dit.cfg.num_heads)  # the checkpoint's heads, now known
    dit.requires_grad_(False)
    wrapped = SequenceParallelDiT(dit, build_mesh(pc))
    if pc.shard_weights:
        from torch.distributed.device_mesh import init_device_mesh

        from chronoedit.parallelize import apply_fsdp

        apply_fsdp(wrapped, init_device_mesh(pipe.device.type, (dist.get_world_size(),)), reduce_dtype=None)
    pipe.c.dit = wrapped
    if pc.cfg > 1:
        pipe.cfg_batched = True  # [cond; uncond] in one call: the wrapper gives each cfg rank its half
    pipe.progress = pipe.progress and dist.get_rank() == 0
    return pipe


def mesh_of(pipe) -> ParallelMesh:
    """The mesh ``pipe`` runs on (the trivial one for a single process)."""
    dit = pipe.c.dit
    return dit.mesh if isinstance(dit, SequenceParallelDiT) else ParallelMesh(ParallelConfig())


def leave_processes(wait: bool = True) -> None:
    """Leave the process group cleanly (nothing for one process)."""
    from chronoedit.training.distributed import shutdown

    shutdown(wait)
