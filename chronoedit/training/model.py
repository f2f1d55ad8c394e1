"""Build the DiT to train: on ``meta``, adapters added, wrapped from the outside (AC, compile, FSDP2), then
materialised on the device and filled tensor by tensor (each process keeps only its shard of each tensor).

Trainable parameters (LoRA A/B, or everything for full fine-tuning) are fp32 master weights; frozen base weights
are stored in ``precision.frozen`` except the DiT's fp32 islands.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributed.tensor import DTensor, distribute_tensor

from chronoedit.checkpoint.architecture import open_model, resolve_init
from chronoedit.checkpoint.load import TensorLike, check_keys, materialize
from chronoedit.lora import add_adapter
from chronoedit.lora.layers import init_lora_a
from chronoedit.models.dit import ChronoEditDiT, DiTConfig
from chronoedit.models.precision import island_dtype
from chronoedit.parallelize import apply_activation_checkpointing, apply_attention, apply_compile, apply_fsdp
from chronoedit.runtime import DTYPES
from chronoedit.training.config import TrainConfig
from chronoedit.training.distributed import World
from chronoedit.training.mixed_precision import apply_fsdp_param_dtype

ADAPTER = "default"  # the adapter name of the trained LoRA (PEFT's default)


@dataclass
class BaseWeights:
    """The DiT to start from: its config and its weights under our names (read lazily from disk)."""

    config: DiTConfig
    tensors: Mapping[str, TensorLike]
    convert: Callable[[str, Tensor], Tensor] | None = None  # e.g. fp8 × scale dequantisation, applied after reading


def base_weights(cfg: TrainConfig, overrides: Mapping[str, Any] | None = None) -> BaseWeights:
    """The DiT of ``cfg``: seeded random weights of ``cfg.model.dit`` (``init=random``), or the DiT of
    ``cfg.checkpoint`` (any layout the registry reads, fp8 included) with the explicit ``model.dit.*``
    ``overrides`` applied and checked against its weights (headers only)."""
    if resolve_init(cfg.checkpoint, cfg.init) == "random":
        model = ChronoEditDiT(cfg.model.dit).init_weights(torch.Generator().manual_seed(cfg.init_seed))
        return BaseWeights(model.cfg, dict(model.state_dict()))
    dit_only = {k: v for k, v in (overrides or {}).items() if k.startswith("dit.")}
    sources, _ = open_model(cfg.checkpoint, dit_only, names=("dit",))
    src = sources["dit"]
    return BaseWeights(src.config, src.tensors, src.convert)


def lora_targets(cfg: TrainConfig, num_layers: int) -> list[str]:
    blocks = range(num_layers) if cfg.lora.blocks is None else cfg.lora.blocks
    bad = [b for b in blocks if not 0 <= b < num_layers]
    if bad:
        raise ValueError(f"lora.blocks {bad} out of range [0, {num_layers})")
    return [f"blocks.{b}.{t}" for b in blocks for t in cfg.lora.targets]


def is_lora_param(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def _assign(p: Tensor, full: Tensor) -> None:
    """Copy a full tensor into parameter ``p``; a sharded (DTensor) parameter keeps only its local shard."""
    if isinstance(p, DTensor):
        shard = distribute_tensor(full.to(p.device), p.device_mesh, p.placements, src_data_rank=None)
        p.to_local().copy_(shard.to_local())
    else:
        p.copy_(full.to(p.device))


@torch.no_grad()
def fill_parameters(model: nn.Module, base: BaseWeights, targets: list[str], lora_seed: int) -> None:
    """Base weights from ``base`` (strict: every key, every shape), new LoRA adapters initialised as
    :func:`chronoedit.lora.add_adapter` does with ``torch.Generator().manual_seed(lora_seed)`` (A Kaiming-uniform
    in target order, B zero)."""
    params = dict(model.named_parameters())
    expected = {n: p for n, p in params.items() if not is_lora_param(n)}
    convert, base = base.convert, base.tensors
    check_keys(expected, base, "DiT weights")
    for name, p in expected.items():
        t = materialize(base[name], None if convert is not None else p.dtype)  # cast while reading
        _assign(p, (convert(name, t) if convert is not None else t).to(p.dtype))
    gen = torch.Generator().manual_seed(lora_seed)
    for t in targets:
        a, b = params[f"{t}.lora_A.{ADAPTER}"], params[f"{t}.lora_B.{ADAPTER}"]
        _assign(a, init_lora_a(a.shape[0], a.shape[1], a.dtype, gen))
        _assign(b, torch.zeros(b.shape, dtype=b.dtype))


def build_model(cfg: TrainConfig, world: World, base: BaseWeights) -> tuple[ChronoEditDiT, list[str]]:
    """The DiT ready to train on ``world`` and the LoRA target module names ([] for full fine-tuning)."""
    dit_cfg = base.config
    with torch.device("meta"):
        model = apply_attention(ChronoEditDiT(dit_cfg), cfg.runtime.attention)
    targets = []
    if cfg.mode == "lora":
        targets = lora_targets(cfg, dit_cfg.num_layers)
        add_adapter(model, targets, name=ADAPTER, rank=cfg.lora.rank, alpha=cfg.lora.alpha, dtype=torch.float32)
    frozen = DTYPES[cfg.precision.frozen]
    for name, p in model.named_parameters():
        trainable = cfg.mode == "full" or is_lora_param(name)
        p.requires_grad_(trainable)
        dtype = torch.float32 if trainable else island_dtype(ChronoEditDiT.keep_fp32, name, frozen)
        if p.dtype != dtype:
            p.data = p.data.to(dtype)
    if cfg.parallel.activation_checkpointing:
        apply_activation_checkpointing(model)
    if cfg.runtime.compile:
        apply_compile(model)
    if world.mesh is not None:
        p = cfg.precision
        param_dtype = None if p.fsdp_param == "float32" else DTYPES[p.fsdp_param]
        apply_fsdp(
            model,
            world.mesh,
            param_dtype=param_dtype,
            reduce_dtype=DTYPES[p.fsdp_reduce],
            reshard_after_forward=cfg.parallel.reshard_after_forward,
        )
    elif cfg.precision.fsdp_param != "float32":  # one process computes as FSDP would: the same loss curve
        apply_fsdp_param_dtype(model, DTYPES[cfg.precision.fsdp_param])
    model.to_empty(device=world.device)
    fill_parameters(model, base, targets, cfg.lora.init_seed)
    return model.train(), targets


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


__all__ = [
    "ADAPTER",
    "BaseWeights",
    "base_weights",
    "build_model",
    "fill_parameters",
    "is_lora_param",
    "lora_targets",
    "trainable_parameters",
]
