"""What a finished run leaves for inference: the LoRA as a PEFT-style safetensors, or (full training) the whole
model as a native checkpoint folder that ``infer/edit.py checkpoint=<run_dir>/export`` loads as it is.

Every process calls these (gathering a sharded tensor is collective); only the main process writes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.distributed.tensor import DTensor

from chronoedit.lora import LoRAWeights
from chronoedit.models.dit import ChronoEditDiT
from chronoedit.models.precision import island_dtype
from chronoedit.runtime import DTYPES
from chronoedit.training.config import TrainConfig
from chronoedit.training.distributed import World
from chronoedit.training.model import ADAPTER

LORA_FILE = "lora.safetensors"
EXPORT_DIR = "export"  # full training: a native checkpoint folder


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
        loras = lora_weights(tensors, targets, cfg.lora.alpha, DTYPES[cfg.checkpoints.export_dtype])
        save_lora(loras, path, scheme="peft")
    return path


def export_full(
    model: nn.Module, cfg: TrainConfig, run_dir: Path, world: World, ema_shadow=None, folder: Path | None = None
) -> Path:
    """``folder`` (default ``<run_dir>/export/``): a native checkpoint (the format ``tools/convert.py`` writes) holding the trained DiT
    in ``export_dtype`` (fp32 islands kept) and the other components it was trained with — the seeded random
    ones of ``cfg.model`` (``init=random``) or those of ``cfg.checkpoint`` — with their tokenizer, image
    preprocessing and scheduler. Its config holds the architecture only (no ``runtime.*``)."""
    trained = trained_tensors(model, ema_shadow)
    dtype = DTYPES[cfg.checkpoints.export_dtype]
    out = {}
    for name, p in model.named_parameters():
        t = full_tensor(trained.get(name, p))  # collective; only the main process keeps the result
        if world.is_main:
            out[name] = t.to(island_dtype(ChronoEditDiT.keep_fp32, name, dtype))
    path = Path(folder) if folder is not None else Path(run_dir) / EXPORT_DIR
    if world.is_main:
        _save_model(path, cfg, model.cfg, out)
    return path


def _save_model(path: Path, cfg: TrainConfig, dit_cfg, dit: Mapping[str, Tensor]) -> None:
    import tempfile

    from chronoedit.checkpoint.architecture import open_model, resolve_init
    from chronoedit.checkpoint.native import save_native
    from chronoedit.pipeline.components import random_components, save_image_processor

    rest = ("vae", "text_encoder", "image_encoder")
    with tempfile.TemporaryDirectory() as tmp:
        if resolve_init(cfg.checkpoint, cfg.init) == "random":
            c = random_components(cfg.model, cfg.init_seed)
            parts = {n: getattr(c, n) for n in rest}
            folders = {"tokenizer": c.tokenizer.folder, "image_processor": save_image_processor(c, Path(tmp))}
        else:
            sources, info = open_model(cfg.checkpoint, names=rest)
            parts = {n: (s.config, s.tensors) for n, s in sources.items()}
            folders = info.folders
        parts = {"dit": (dit_cfg, dit), **parts}
        save_native(path, parts, folders=folders, source=f"chronoedit train ({cfg.checkpoint})", overwrite=True)


__all__ = ["EXPORT_DIR", "LORA_FILE", "export_full", "export_lora", "full_tensor", "gather", "lora_weights"]
