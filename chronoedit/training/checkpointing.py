"""Resumable training checkpoints: atomic, sharded (torch.distributed.checkpoint), exact.

Layout of ``<run_dir>/checkpoints/step_00000100/``:

    *.distcp, .metadata   model (trainable parameters only for LoRA), optimizer and EMA state, one file per
                          process (DCP: a checkpoint written by N processes loads into M)
    rng_rank{r}.pt        each process's RNG states (torch CPU/CUDA, Python, NumPy)
    trainer.json          step, data position, world size and the training config — written last

Everything is written into ``step_00000100.tmp/`` and renamed once every process has finished, so a folder
without the ``.tmp`` suffix is always complete: a run killed while saving resumes from the previous checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import random
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.tensor import DTensor

from chronoedit.checkpoint.errors import CheckpointError
from chronoedit.checkpoint.pickle_io import load_pickle
from chronoedit.files import OutputError, check_free_space, fsync_path
from chronoedit.training.config import TrainConfig
from chronoedit.training.distributed import World, all_reduce_sum, barrier, broadcast_object

log = logging.getLogger("chronoedit.training")

CHECKPOINTS = "checkpoints"
TRAINER_STATE = "trainer.json"
_STEP_DIR = re.compile(r"step_(\d{8})")
# Config keys that may change when resuming (everything else must match the checkpoint's config).
RESUMABLE_CHANGES = (
    "steps",
    "log_every",
    "run_dir",
    "resume",
    "overwrite",
    "checkpoints.",
    "parallel.",
    "runtime.",
    "optim.lr",
    "optim.warmup_steps",
    "optim.schedule",
    "optim.min_lr_ratio",
    "optim.grad_clip",
    "micro_batch_size",
    "ema.export",
    "lora.init_seed",
)


def step_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step_{step:08d}"


def complete_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint, oldest first (``.tmp`` folders are never complete)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = _STEP_DIR.fullmatch(p.name)
        if m and p.is_dir() and (p / TRAINER_STATE).is_file():
            out.append((int(m.group(1)), p))
    return sorted(out)


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = complete_checkpoints(run_dir)
    return found[-1][1] if found else None


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: list(d) if isinstance(d, tuple) else d}


def config_differences(saved: dict, cfg: TrainConfig) -> list[str]:
    """'key: checkpoint value -> config value' for every key that must not change on resume but did."""
    now, then = _flatten(json.loads(json.dumps(dataclasses.asdict(cfg)))), _flatten(saved)
    keys = sorted(set(now) | set(then))
    changed = [k for k in keys if now.get(k, "<absent>") != then.get(k, "<absent>")]
    if cfg.mode == "full":  # LoRA settings do not matter when there is no LoRA
        changed = [k for k in changed if not k.startswith("lora.")]
    return [
        f"{k}: {then.get(k, '<absent>')!r} -> {now.get(k, '<absent>')!r}"
        for k in changed
        if not any(k == r or (r.endswith(".") and k.startswith(r)) for r in RESUMABLE_CHANGES)
    ]


def read_trainer_state(folder: Path) -> dict:
    return json.loads((Path(folder) / TRAINER_STATE).read_text())


def check_resumable(folder: Path, cfg: TrainConfig) -> dict:
    """The checkpoint's trainer state, or a ValueError naming every incompatible config key."""
    state = read_trainer_state(folder)
    diffs = config_differences(state["config"], cfg)
    if diffs:
        raise ValueError(f"cannot resume from {folder}: the config differs where it must not — " + "; ".join(diffs))
    return state


def _options(cfg: TrainConfig) -> StateDictOptions:
    """LoRA checkpoints hold the trainable parameters only (the base comes from ``checkpoint``); loading is
    still strict about those, since ``dcp.load`` fails on any key the checkpoint lacks."""
    lora = cfg.mode == "lora"
    return StateDictOptions(ignore_frozen_params=lora, strict=not lora)


def _app_state(model: nn.Module, optimizer: torch.optim.Optimizer, ema, cfg: TrainConfig) -> dict:
    state = {
        "model": get_model_state_dict(model, options=_options(cfg)),
        "optim": get_optimizer_state_dict(model, optimizer, options=_options(cfg)),
    }
    if ema is not None:
        state["ema"] = ema.state_dict()
    return state


def _rng_state(device: torch.device) -> dict:
    """Every RNG state as tensors and plain values only, so that it loads with ``torch.load(weights_only=True)``."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
    }


def _nbytes(state: Any) -> int:
    """Bytes of every tensor in a (nested) state dict; of the local shard for a sharded tensor."""
    if isinstance(state, DTensor):
        state = state.to_local()
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(_nbytes(v) for v in state.values())
    if isinstance(state, list | tuple):
        return sum(_nbytes(v) for v in state)
    return 0


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state["cuda"] is not None:
        torch.cuda.set_rng_state(state["cuda"], device)
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    ema,
    trainer_state: dict,
    cfg: TrainConfig,
    world: World,
) -> Path:
    """Write the checkpoint of ``step`` atomically (every process calls this); returns its folder."""
    final = step_dir(run_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    app = _app_state(model, optimizer, ema, cfg)
    need = int(all_reduce_sum(torch.tensor(_nbytes(app), dtype=torch.float64, device=world.device)))
    problem = None
    if world.is_main:
        if tmp.exists():
            shutil.rmtree(tmp)  # a save of this step that was killed half-way
        try:
            check_free_space(final.parent, need, what="checkpoint")
            tmp.mkdir(parents=True)
        except (OutputError, OSError) as e:
            problem = str(e)
    problem = broadcast_object(problem)  # every process fails together (none waits at a barrier for ever)
    if problem is not None:
        raise OutputError(f"cannot save the checkpoint of step {step}: {problem}")
    with _quiet_single_process():
        dcp.save(app, checkpoint_id=str(tmp), no_dist=not dist.is_initialized())
    torch.save(_rng_state(world.device), tmp / f"rng_rank{world.rank}.pt")
    barrier()
    if world.is_main:
        state = {**trainer_state, "step": step, "world_size": world.size, "config": dataclasses.asdict(cfg)}
        (tmp / TRAINER_STATE).write_text(json.dumps(state, indent=1, default=list))
        fsync_path(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_path(final.parent)
        for _, old in complete_checkpoints(run_dir)[: -cfg.checkpoints.keep]:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def load_checkpoint(
    folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, ema, cfg: TrainConfig, world: World
) -> dict:
    """Restore model, optimizer, EMA and (with the same world size) RNG states; returns the trainer state."""
    state = check_resumable(folder, cfg)
    app = _app_state(model, optimizer, ema, cfg)
    with _quiet_single_process():
        dcp.load(app, checkpoint_id=str(folder), no_dist=not dist.is_initialized())
    set_model_state_dict(model, app["model"], options=_options(cfg))
    set_optimizer_state_dict(model, optimizer, app["optim"], options=_options(cfg))
    if ema is not None:
        ema.load_state_dict(app["ema"])
    rng = Path(folder) / f"rng_rank{world.rank}.pt"
    if state["world_size"] != world.size or not rng.is_file():
        log.warning("RNG states not restored (saved by %d processes, now %d)", state["world_size"], world.size)
        return state
    try:
        _set_rng_state(load_pickle(rng), world.device)
    except (CheckpointError, KeyError, TypeError, ValueError) as e:  # e.g. written before RNG states were tensors
        log.warning("RNG states not restored (%s)", e)
    return state


@contextlib.contextmanager
def _quiet_single_process():
    """DCP warns that it "assumes a single process" when there is no process group: that is the intent here."""
    with warnings.catch_warnings():
        if not dist.is_initialized():
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


__all__ = [
    "CHECKPOINTS",
    "check_resumable",
    "complete_checkpoints",
    "config_differences",
    "latest_checkpoint",
    "load_checkpoint",
    "save_checkpoint",
    "step_dir",
]
