"""The training loop: plan → micro-batches → flow-matching loss → backward → clip → AdamW → EMA → log → checkpoint.

Every process runs the same loop on its slots of the global batch; with FSDP2 gradients are averaged over the
processes, and each process scales its loss by world/batch so the update is the global-batch mean whatever
the number of processes or accumulation steps.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.distributed.tensor import DTensor

from chronoedit.runtime import DTYPES
from chronoedit.training.checkpointing import (
    CHECKPOINTS,
    check_resumable,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from chronoedit.training.config import OptimConfig, TrainConfig
from chronoedit.training.data import Batch, BatchPlanner, StepPlan, collate, open_source, rank_slots
from chronoedit.training.distributed import World, all_reduce_sum, barrier
from chronoedit.training.ema import EMA
from chronoedit.training.export import EXPORT_DIR, LORA_FILE, export_full, export_lora
from chronoedit.training.metrics import METRICS, MetricsLog
from chronoedit.training.model import base_weights, build_model, trainable_parameters
from chronoedit.training.objective import draw_sample, flow_loss, model_input, noisy_latents

CONFIG_FILE = "config.yaml"
OUR_FILES = (CHECKPOINTS, METRICS, CONFIG_FILE, LORA_FILE, EXPORT_DIR)
EVAL_STEP = -1  # the step key of the fixed draws used by :meth:`Trainer.eval_loss`


def lr_at(cfg: OptimConfig, step: int, total: int) -> float:
    """Learning rate of optimizer step ``step`` (1-based): linear warm-up, then constant or cosine."""
    if cfg.warmup_steps and step <= cfg.warmup_steps:
        return cfg.lr * step / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def prepare_run_dir(run_dir: Path, cfg: TrainConfig, world: World) -> Path | None:
    """Check the run folder (never overwrite what the user made) and return the checkpoint to resume from."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"run_dir {run_dir} exists and is not a folder")
    if cfg.resume:
        ckpt = latest_checkpoint(run_dir)
        if ckpt is None:
            raise ValueError(f"resume=true but {run_dir} holds no complete checkpoint")
        check_resumable(ckpt, cfg)
        return ckpt
    if run_dir.is_dir() and any(run_dir.iterdir()):
        if not cfg.overwrite:
            raise ValueError(f"run_dir {run_dir} is not empty (resume=true to continue it, overwrite=true to restart)")
        barrier()
        if world.is_main:  # only our own outputs go; anything else in the folder stays
            for name in OUR_FILES:
                p = run_dir / name
                shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    barrier()
    if world.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg_dict = json_safe(dataclasses.asdict(cfg))
        (run_dir / CONFIG_FILE).write_text(yaml.safe_dump(cfg_dict, sort_keys=False))
    barrier()
    return None


def json_safe(d):
    if isinstance(d, dict):
        return {k: json_safe(v) for k, v in d.items()}
    return list(d) if isinstance(d, tuple) else d


class Trainer:
    def __init__(
        self, cfg: TrainConfig, run_dir: str | Path, world: World, model_overrides: Mapping[str, Any] | None = None
    ) -> None:
        self.cfg, self.run_dir, self.world = cfg, Path(run_dir), world
        self.accum = cfg.check_world(world.size)
        base = base_weights(cfg, model_overrides)  # a misfit override fails here, before the run folder is touched
        resume_from = prepare_run_dir(self.run_dir, cfg, world)
        self.source = open_source(cfg.data, base.config.text_dim, base.config.image_dim)
        if cfg.objective.text_dropout > 0 and self.source.empty_context is None:
            raise ValueError("objective.text_dropout > 0 needs the empty prompt's embedding in the dataset folder")
        self.planner = BatchPlanner(cfg.data, self.source.counts, cfg.batch_size)
        self.model, self.targets = build_model(cfg, world, base)
        del base
        self.params = trainable_parameters(self.model)
        o = cfg.optim
        self.optimizer = torch.optim.AdamW(
            list(self.params.values()), lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay, foreach=True
        )
        self.ema = EMA(self.params, cfg.ema.decay) if cfg.ema.enabled else None
        self.step = 0
        if resume_from is not None:
            state = load_checkpoint(resume_from, self.model, self.optimizer, self.ema, cfg, world)
            self.step = int(state["step"])
            self.planner.load_state_dict(state["planner"])
        self.metrics = MetricsLog(self.run_dir, world.is_main, self.step if resume_from is not None else None)
        compute = DTYPES[cfg.precision.compute]
        self._autocast = (
            (lambda: torch.autocast(world.device.type, dtype=compute))
            if compute != torch.float32
            else contextlib.nullcontext
        )

    # ------------------------------------------------------------------ one step
    def _micro_batch(self, plan: StepPlan, slots: range, step: int) -> tuple[Batch, torch.Tensor, list]:
        examples, draws = [], []
        obj = self.cfg.objective
        for s in slots:
            ex = self.source.load(plan.kind, plan.indices[s])
            d = draw_sample(obj.timesteps, tuple(ex.latents.shape), obj.text_dropout, self.cfg.seed, step, s)
            if d.drop_text:
                ex = dataclasses.replace(ex, context=self.source.empty_context.float())
            examples.append(ex)
            draws.append(d)
        return collate(examples), torch.stack([d.noise for d in draws]), draws

    def _loss(self, batch: Batch, noise: torch.Tensor, draws: list) -> torch.Tensor:
        """Per-sample losses (B,) of one micro-batch (with grad)."""
        dev = self.world.device
        sigma = torch.tensor([d.sigma for d in draws], dtype=torch.float32, device=dev)
        x_t, target = noisy_latents(batch.latents.to(dev), noise.to(dev), sigma)
        inp = model_input(x_t, batch.cond_latents.to(dev))
        t = torch.tensor([d.timestep for d in draws], dtype=torch.float32, device=dev)
        with self._autocast():
            pred = self.model(inp, t, batch.context.to(dev), batch.clip.to(dev))
        weight = torch.tensor([d.weight for d in draws], dtype=torch.float32, device=dev)
        return flow_loss(pred, target, weight, self.cfg.objective.loss_on_input_frame)

    def _grad_norm_and_clip(self) -> float:
        grads = [p.grad for p in self.params.values() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
        if isinstance(norm, DTensor):
            norm = norm.full_tensor()
        if self.cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grads_with_norm_(list(self.params.values()), self.cfg.optim.grad_clip, norm)
        return float(norm)

    def train_step(self) -> dict:
        """One optimizer step over the next global batch; returns its metrics (identical on every process)."""
        cfg, world = self.cfg, self.world
        step = self.step + 1
        t0 = time.perf_counter()
        plan = self.planner.next(step)
        slots = rank_slots(cfg.batch_size, world.rank, world.size)
        mb, scale = cfg.micro_batch_size, world.size / cfg.batch_size
        loss_sum = torch.zeros((), dtype=torch.float64, device=world.device)
        tokens = 0
        for m in range(self.accum):
            batch, noise, draws = self._micro_batch(plan, slots[m * mb : (m + 1) * mb], step)
            per_sample = self._loss(batch, noise, draws)
            (per_sample.sum() * scale).backward()
            loss_sum += per_sample.detach().double().sum()
            tokens += batch.latents[:, 0].numel() // 4  # latent tokens after the 2×2 patch
        grad_norm = self._grad_norm_and_clip()
        lr = lr_at(cfg.optim, step, cfg.steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.params)
        self.step = step
        loss = float(all_reduce_sum(loss_sum) / cfg.batch_size)
        dt = time.perf_counter() - t0
        record = {"step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm, "kind": plan.kind}
        record.update(step_s=dt, samples_per_s=cfg.batch_size / dt, tokens_per_s=tokens * world.size / dt)
        if world.device.type == "cuda":
            record["max_mem_gb"] = torch.cuda.max_memory_allocated(world.device) / 2**30
        return record

    # ------------------------------------------------------------------ the run
    def save(self) -> Path:
        state = {"planner": self.planner.state_dict(), "samples_seen": self.step * self.cfg.batch_size}
        return save_checkpoint(
            self.run_dir, self.step, self.model, self.optimizer, self.ema, state, self.cfg, self.world
        )

    def fit(self, until: int | None = None) -> list[dict]:
        """Train up to step ``until`` (default: ``cfg.steps``), checkpointing every ``checkpoints.every`` steps and
        at ``cfg.steps``; returns the records of the steps run."""
        end = self.cfg.steps if until is None else min(until, self.cfg.steps)
        every = self.cfg.checkpoints.every
        records = []
        while self.step < end:
            r = self.train_step()
            records.append(r)
            if self.step % self.cfg.log_every == 0 or self.step == self.cfg.steps:
                self.metrics.log(r)
            if (every and self.step % every == 0) or self.step == self.cfg.steps:
                self.save()
            snapshot = self.cfg.checkpoints.export_every
            if self.cfg.mode == "full" and snapshot and self.step % snapshot == 0 and self.step < self.cfg.steps:
                self.export(self.run_dir / "exports" / f"step_{self.step:06d}")  # success against training time
        return records

    def export(self, folder: Path | None = None) -> Path:
        """The trained LoRA (``lora.safetensors``), or for full training the whole model as a native checkpoint
        folder (``folder``, default ``export/``: the trained DiT and the components it was trained with)."""
        shadow = self.ema.shadow if (self.ema is not None and self.cfg.ema.export) else None
        if self.cfg.mode == "lora":
            return export_lora(self.model, self.targets, self.cfg, self.run_dir, self.world, shadow)
        return export_full(self.model, self.cfg, self.run_dir, self.world, shadow, folder)

    @torch.no_grad()
    def plan_loss(self, plan: StepPlan, step: int) -> float:
        """Mean loss (no gradient) of a plan's examples under the draws training uses at ``step``."""
        total = 0.0
        for i in range(len(plan.indices)):
            batch, noise, draws = self._micro_batch(plan, range(i, i + 1), step)
            total += float(self._loss(batch, noise, draws).sum())
        return total / len(plan.indices)

    def eval_loss(self, kind: str = "pair", draws: int = 8) -> float:
        """Mean loss over every example of ``kind``, each under ``draws`` fixed (σ, ε) draws — the same at every
        call, so two calls measure the change of the model alone."""
        n = self.source.counts[kind]
        return self.plan_loss(StepPlan(EVAL_STEP, kind, [i for i in range(n) for _ in range(draws)]), EVAL_STEP)


__all__ = ["Trainer", "lr_at", "prepare_run_dir"]
