"""A training run from a :class:`TrainConfig`: cheap checks first, then the process group, the trainer, the export."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from chronoedit.checkpoint.architecture import NO_CHECKPOINT
from chronoedit.training.checkpointing import check_resumable, latest_checkpoint
from chronoedit.training.config import TrainConfig
from chronoedit.training.data import CACHE_INDEX
from chronoedit.training.distributed import broadcast_object, init_world, shutdown


def check_inputs(cfg: TrainConfig, run_dir: Path | None = None) -> None:
    """Everything that can be checked without a model: the dataset, the checkpoint path, the run folder and, when
    resuming, the checkpoint's config. A ValueError with one line naming the problem. ``run_dir`` defaults to
    ``cfg.run_dir`` (unset: Hydra's new timestamped folder, nothing to check). Under torchrun the batch is checked
    against its WORLD_SIZE."""
    cfg.check_world(int(os.environ.get("WORLD_SIZE", "1")))
    if cfg.data.cache is not None:
        cache = Path(cfg.data.cache)
        if not cache.is_dir():
            raise ValueError(f"data.cache={cache}: no such folder")
        if not (cache / CACHE_INDEX).is_file():
            raise ValueError(
                f"data.cache={cache} is not a pre-encoded dataset (no {CACHE_INDEX}; run train/preencode.py)"
            )
    from chronoedit.checkpoint.architecture import resolve_init

    if cfg.checkpoint != NO_CHECKPOINT and not Path(cfg.checkpoint).exists():
        raise ValueError(f"checkpoint={cfg.checkpoint}: no such file or folder")
    resolve_init(cfg.checkpoint, cfg.init)
    run_dir = run_dir if run_dir is not None else cfg.run_dir
    if run_dir is None:
        return
    run_dir = Path(run_dir)
    if cfg.resume:
        ckpt = latest_checkpoint(run_dir)
        if ckpt is None:
            raise ValueError(f"resume=true but {run_dir} holds no complete checkpoint")
        check_resumable(ckpt, cfg)
    elif run_dir.is_dir() and any(run_dir.iterdir()) and not cfg.overwrite:
        raise ValueError(f"run_dir {run_dir} is not empty (resume=true to continue it, overwrite=true to restart)")


def run(cfg: TrainConfig, run_dir: Path, model_overrides: Mapping[str, Any] | None = None) -> dict:
    """Train (on every process torchrun started, or this one) and export; returns a summary.
    ``model_overrides``: the ``model.*`` fields given explicitly (they replace a checkpoint's own)."""
    try:
        summary = _train(
            cfg, run_dir, model_overrides
        )  # the trainer, its model and the mesh are freed when this returns
    except BaseException:
        shutdown(wait=False)
        raise
    shutdown()
    if summary.pop("is_main"):
        print(json.dumps(summary))
    return summary


def _train(cfg: TrainConfig, run_dir: Path, model_overrides: Mapping[str, Any] | None) -> dict:
    from chronoedit.training.trainer import Trainer

    world = init_world(cfg.runtime.device, cfg.parallel.backend, cfg.parallel.shard_size)
    run_dir = Path(broadcast_object(str(run_dir)))  # Hydra's timestamped folder may differ between processes
    t0 = time.perf_counter()
    trainer = Trainer(cfg, run_dir, world, model_overrides)
    start = trainer.step
    trainer.fit()
    exported = trainer.export()
    return {
        "run_dir": str(run_dir),
        "steps": trainer.step,
        "resumed_from": start or None,
        "exported": str(exported),
        "world_size": world.size,
        "seconds": round(time.perf_counter() - t0, 2),
        "is_main": world.is_main,
    }
