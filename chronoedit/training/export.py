"""What a finished run leaves for inference: the LoRA as a PEFT-style safetensors, or the full DiT weights.

Every process calls these (gathering a sharded tensor is collective); only the main process writes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.distributed.tensor import DTensor

from chronoedit.checkpoint.safetensors_io import save_file
from chronoedit.lora import LoRAWeights
from chronoedit.models.dit import ChronoEditDiT
from chronoedit.training.config import DTYPES, TrainConfig
from chronoedit.training.distributed import World
from chronoedit.training.model import ADAPTER

LORA_FILE = "lora.safetensors"
DIT_FILE = "dit.safetensors"


def full_tensor(t: Tensor) -> Tensor:
    """The whole tensor on the CPU (a collective for a sharded DTensor: every process must call it)."""
    t = t.detach()
    return (t.full_tensor() if isinstance(t, DTensor) else t).cpu()


def gather(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {name: full_tensor(t) for name, t in tensors.items()}


def trained_tensors(model: nn.Module, ema_shadow: Mapping[str, Tensor] | None) -> dict[str, Tensor]:
    """The trainable parameters by name, or their EMA when given."""
    if ema_shadow is not None:
        return dict(ema_shadow)
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def lora_weights(tensors: Mapping[str, Tensor], targets: list[str], alpha: float, dtype: torch.dtype):
    """{module: LoRAWeights} from full ``lora_A``/``lora_B`` tensors named as in the model."""
    out = {}
    for t in targets:
        down, up = tensors[f"{t}.lora_A.{ADAPTER}"], tensors[f"{t}.lora_B.{ADAPTER}"]
        out[t] = LoRAWeights(down=down.to(dtype), up=up.to(dtype), alpha=float(alpha))
    return out


def export_lora(
    model: nn.Module, targets: list[str], cfg: TrainConfig, run_dir: Path, world: World, ema_shadow=None
) -> Path:
    """``<run_dir>/lora.safetensors`` in PEFT/diffusers naming (loads in our pipeline and diffusers)."""
    from chronoedit.lora.export import save_lora

    tensors = gather(trained_tensors(model, ema_shadow))
    path = Path(run_dir) / LORA_FILE
    if world.is_main:
        loras = lora_weights(tensors, targets, cfg.lora.alpha, DTYPES[cfg.checkpoint.export_dtype])
        save_lora(loras, path, scheme="peft")
    return path


def export_full(model: nn.Module, cfg: TrainConfig, run_dir: Path, world: World, ema_shadow=None) -> Path:
    """``<run_dir>/dit.safetensors``: every DiT weight under our (original Wan) names, in ``export_dtype`` except
    the fp32 islands. Load it with ``model.checkpoint=<file> model.preset=…`` or any Wan-named loader."""
    trained = trained_tensors(model, ema_shadow)
    dtype = DTYPES[cfg.checkpoint.export_dtype]
    out = {}
    for name, p in model.named_parameters():
        t = full_tensor(trained.get(name, p))  # collective; only the main process keeps the result
        if world.is_main:
            out[name] = t.to(torch.float32 if ChronoEditDiT.keep_fp32(name) else dtype)
    path = Path(run_dir) / DIT_FILE
    if world.is_main:
        save_file(out, path, metadata={"format": "pt", "source": "chronoedit train"})
    return path


__all__ = ["DIT_FILE", "LORA_FILE", "export_full", "export_lora", "full_tensor", "gather", "lora_weights"]
