"""Build the DiT to train: on ``meta``, adapters added, wrapped from the outside (AC, compile, FSDP2), then
materialised on the device and filled tensor by tensor (each process keeps only its shard of each tensor).

Trainable parameters (LoRA A/B, or everything for full fine-tuning) are fp32 master weights; frozen base weights
are stored in ``precision.frozen`` except the DiT's fp32 islands.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.distributed.tensor import DTensor, distribute_tensor

from chronoedit.checkpoint.errors import CheckpointError, name_some
from chronoedit.checkpoint.load import TensorLike, materialize
from chronoedit.lora import add_adapter
from chronoedit.models.dit import ChronoEditDiT, DiTConfig
from chronoedit.models.dit.config import DIT_PRESETS, dit_preset
from chronoedit.parallelize import apply_activation_checkpointing, apply_compile, apply_fsdp
from chronoedit.training.config import DTYPES, TrainConfig
from chronoedit.training.distributed import World

TINY = "tiny"
ADAPTER = "default"  # the adapter name of the trained LoRA (PEFT's default)


def tiny_dit_config() -> DiTConfig:
    """The edit demo's tiny DiT: the tiny preset with the tiny UMT5 and CLIP widths."""
    from chronoedit.models.clip import CLIP_PRESETS
    from chronoedit.models.text import UMT5_PRESETS

    return DIT_PRESETS["tiny"].replace(text_dim=UMT5_PRESETS["tiny"].dim, image_dim=CLIP_PRESETS["tiny"].dim)


@dataclass
class BaseWeights:
    """The DiT to start from: its config and its weights under our names (read lazily from disk)."""

    config: DiTConfig
    tensors: Mapping[str, TensorLike]
    convert: Callable[[str, Tensor], Tensor] | None = None  # e.g. fp8 × scale dequantisation, applied after reading


def base_weights(checkpoint: str, seed: int = 0, preset: str | None = None) -> BaseWeights:
    """``checkpoint``: "tiny" (the edit demo's seeded random DiT) or any DiT checkpoint
    :func:`chronoedit.checkpoint.dit.inspect_dit` reads (a diffusers pipeline or ``transformer/`` folder, a native
    folder or file, a Wan-named single file, fp8 included); ``preset`` replaces the checkpoint's config."""
    if checkpoint == TINY:
        model = ChronoEditDiT(tiny_dit_config()).init_weights(torch.Generator().manual_seed(seed))
        return BaseWeights(model.cfg, dict(model.state_dict()))
    from chronoedit.checkpoint.dit import inspect_dit
    from chronoedit.checkpoint.fp8 import FP8_DTYPES, dequantize

    src = inspect_dit(checkpoint, dit_preset(preset) if preset is not None else None)
    parts = src.parts

    def convert(name: str, t: Tensor) -> Tensor:
        return dequantize(t, parts.scale_of(name)) if t.dtype in FP8_DTYPES else t

    return BaseWeights(src.config, parts.params, convert if src.format.fp8 else None)


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
    missing = [k for k in expected if k not in base]
    unexpected = [k for k in base if k not in expected]
    misshaped = [f"{k} {tuple(base[k].shape)} vs {tuple(p.shape)}" for k, p in expected.items()
                 if k in base and tuple(base[k].shape) != tuple(p.shape)]  # fmt: skip
    if missing or unexpected or misshaped:
        raise CheckpointError(
            f"DiT weights do not fit the model — missing: {name_some(missing)}; unexpected: {name_some(unexpected)}; "
            f"misshaped: {name_some(misshaped, 6)}"
        )
    for name, p in expected.items():
        t = materialize(base[name], None if convert is not None else p.dtype)  # cast while reading
        _assign(p, (convert(name, t) if convert is not None else t).to(p.dtype))
    gen = torch.Generator().manual_seed(lora_seed)
    for t in targets:
        a, b = params[f"{t}.lora_A.{ADAPTER}"], params[f"{t}.lora_B.{ADAPTER}"]
        full_a = torch.empty(a.shape, dtype=a.dtype)
        bound = 1 / a.shape[1] ** 0.5
        full_a.uniform_(-bound, bound, generator=gen)
        _assign(a, full_a)
        _assign(b, torch.zeros(b.shape, dtype=b.dtype))


def build_model(cfg: TrainConfig, world: World, base: BaseWeights) -> tuple[ChronoEditDiT, list[str]]:
    """The DiT ready to train on ``world`` and the LoRA target module names ([] for full fine-tuning)."""
    dit_cfg = base.config.replace(attn_backend=cfg.model.attn_backend)
    with torch.device("meta"):
        model = ChronoEditDiT(dit_cfg)
    targets = []
    if cfg.mode == "lora":
        targets = lora_targets(cfg, dit_cfg.num_layers)
        add_adapter(model, targets, name=ADAPTER, rank=cfg.lora.rank, alpha=cfg.lora.alpha, dtype=torch.float32)
    frozen = DTYPES[cfg.precision.frozen]
    for name, p in model.named_parameters():
        trainable = cfg.mode == "full" or is_lora_param(name)
        p.requires_grad_(trainable)
        dtype = torch.float32 if trainable or ChronoEditDiT.keep_fp32(name) else frozen
        if p.dtype != dtype:
            p.data = p.data.to(dtype)
    if cfg.parallel.activation_checkpointing:
        apply_activation_checkpointing(model)
    if cfg.parallel.compile:
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
    model.to_empty(device=world.device)
    fill_parameters(model, base, targets, cfg.lora.init_seed)
    return model.train(), targets


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


__all__ = [
    "ADAPTER",
    "TINY",
    "BaseWeights",
    "base_weights",
    "build_model",
    "fill_parameters",
    "is_lora_param",
    "lora_targets",
    "tiny_dit_config",
    "trainable_parameters",
]
