"""Process-group set-up for ``torchrun`` (its RANK / WORLD_SIZE / LOCAL_RANK) and for a single plain process."""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh


@dataclass(frozen=True)
class World:
    rank: int
    size: int
    local_rank: int
    device: torch.device
    mesh: DeviceMesh | None  # the data-parallel mesh FSDP shards over (None: one process, no FSDP)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def resolve_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={name} but CUDA is not available")
        device = torch.device("cuda", local_rank if device.index is None else device.index)
        torch.cuda.set_device(device)
    return device


def init_world(device: str = "auto", backend: str = "auto", shard_size: int = -1) -> World:
    """Join the process group torchrun set up (or none, for one plain process) and build the FSDP mesh.

    With several processes the model is always under FSDP2: the mesh is 1-D (``dp_shard``) when it is sharded
    over every rank, 2-D (``dp_replicate``, ``dp_shard``: HSDP) when ``shard_size`` is smaller than the world;
    ``shard_size=1`` is plain data parallelism (every rank holds the whole model, gradients all-reduced).
    """
    if not launched_by_torchrun():
        return World(0, 1, 0, resolve_device(device, 0), None)
    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    dev = resolve_device(device, local_rank)
    if not dist.is_initialized():
        be = backend if backend != "auto" else ("nccl" if dev.type == "cuda" else "gloo")
        dist.init_process_group(backend=be, device_id=dev if dev.type == "cuda" else None)
    mesh = None
    if size > 1:
        shard = size if shard_size == -1 else shard_size
        if size % shard:
            raise ValueError(f"parallel.shard_size={shard} does not divide the world size {size}")
        if shard == size:
            mesh = init_device_mesh(dev.type, (size,), mesh_dim_names=("dp_shard",))
        else:
            mesh = init_device_mesh(dev.type, (size // shard, shard), mesh_dim_names=("dp_replicate", "dp_shard"))
    return World(rank, size, local_rank, dev, mesh)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_object(obj, src: int = 0):
    """``obj`` of rank ``src`` on every rank."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def shutdown(wait: bool = True) -> None:
    """Leave the process group cleanly. ``wait``: first wait for every rank (no collective still in flight on a
    peer, e.g. rank 0 writing the export); not after an error, when the peers may never arrive. Then free what
    still refers to the groups (FSDP's DTensors, meshes) while the interpreter is whole, and destroy them: gloo's
    worker threads may otherwise outlive the groups into interpreter shutdown and abort the process."""
    if not dist.is_initialized():
        return
    try:
        if wait:
            dist.barrier()
    finally:
        gc.collect()
        dist.destroy_process_group()
