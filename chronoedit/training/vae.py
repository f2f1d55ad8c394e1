"""Train the causal Wan VAE from scratch on a dataset folder (the training data format: metadata.jsonl with input,
output image or clip folder), then measure its latent statistics. The toy recipe's first model (``make toy``).

What the VAE must serve is what ChronoEdit feeds it, so every training sample is a 5-frame video (one latent frame
through the first-frame path, one through the 4-frame chunk path with the causal cache), cropped at one place:

    pair      [input, edit, edit, edit, edit]       the target video of an edit pair
    condition [input, 0, 0, 0, 0]                   the condition video (zeros after the input frame)
    window    5 consecutive frames of a clip        the reasoning video

Loss: mean |x̂ − x| of the posterior mean's decoding + ``kl_weight`` · mean KL(q(z|x) ‖ N(0, 1)) per latent
element (``sample=true`` decodes a reparameterised sample instead; from a random init its unit noise drowns the
small mean and training stalls — measured: PSNR 12 dB after 300 steps). After training, ``latents_mean``/``latents_std`` are measured per
channel on the posterior means of whole-frame pair and condition videos and stored in the config, so that
``normalize`` gives the DiT unit-scale latents as the released VAE's constants do.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from chronoedit.models.vae import WanVAE
from chronoedit.models.vae.config import VAEConfig

log = logging.getLogger("chronoedit.training")

KINDS = ("pair", "condition", "window")
FG_THRESHOLD = 0.2  # in [−1, 1] units: a pixel this far from the background in some channel belongs to an object


@dataclass
class VAETrainConfig:
    dataset: str  # a folder with metadata.jsonl (e.g. tools/make_toy_dataset.py's)
    steps: int = 1500
    batch_size: int = 4
    crop: int = 64  # square crop side (multiple of 8); the VAE is fully convolutional
    mix: tuple[float, float, float] = (0.4, 0.2, 0.4)  # pair, condition, window
    lr: float = 1e-3
    warmup_steps: int = 50
    kl_weight: float = 1e-4
    sample: bool = False  # decode a reparameterised sample (at random init its noise drowns the mean: slow start)
    limit: int = 2000  # rows of the dataset read into memory
    seed: int = 0
    init_seed: int = 0
    log_every: int = 50
    stats_videos: int = 128  # whole-frame videos measured for latents_mean / latents_std
    fg_weight: float = 0.0  # extra weight of the pixels that differ from the frame's background (0: plain mean)
    object_crops: float = 0.0  # share of crops placed on a non-background pixel of the video's last frame
    init_gain: float = 1.0  # conv weights start at uniform(±gain/√fan_in) (2.45 ≈ Kaiming's std √(2/fan_in))
    schedule: str = "cosine"  # "cosine" (warm-up, cosine to 10%) or "constant" (warm-up, then lr: a snapshot at
    #                            step N equals a run of N steps)
    snapshot_every: int = 0  # call train_vae's ``snapshot`` every N steps (0: never)

    def __post_init__(self) -> None:
        self.mix = tuple(float(m) for m in self.mix)
        problems = []
        if self.steps < 1 or self.batch_size < 1 or self.limit < 1 or self.stats_videos < 1:
            problems.append("steps, batch_size, limit and stats_videos must be >= 1")
        if self.crop < 8 or self.crop % 8:
            problems.append(f"crop={self.crop} must be a positive multiple of 8")
        if len(self.mix) != 3 or min(self.mix) < 0 or sum(self.mix) <= 0:
            problems.append(f"mix={self.mix} must be three non-negative weights (pair, condition, window)")
        if self.fg_weight < 0 or not 0 <= self.object_crops <= 1:
            problems.append(f"fg_weight={self.fg_weight} must be >= 0 and object_crops={self.object_crops} in [0, 1]")
        if not self.init_gain > 0 or self.schedule not in ("cosine", "constant") or self.snapshot_every < 0:
            problems.append(f"init_gain={self.init_gain} must be > 0, schedule={self.schedule!r} one of "
                            f"'cosine', 'constant', snapshot_every={self.snapshot_every} >= 0")  # fmt: skip
        if not self.lr > 0 or self.kl_weight < 0:
            problems.append(f"lr={self.lr} must be > 0 and kl_weight={self.kl_weight} >= 0")
        if problems:
            raise ValueError("invalid VAE training config: " + "; ".join(problems))


def _read(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)  # (H, W, 3)


@dataclass
class FrameBank:
    """Every frame of the first ``limit`` rows in memory: per row the input, the edit, and a clip's frames."""

    inputs: list[np.ndarray]
    edits: list[np.ndarray]
    clips: list[np.ndarray]  # (F, H, W, 3) per clip row

    @staticmethod
    def read(folder: str | Path, limit: int) -> FrameBank:
        root = Path(folder)
        meta = root / "metadata.jsonl"
        if not meta.is_file():
            raise ValueError(f"dataset={folder}: no metadata.jsonl")
        inputs, edits, clips = [], [], []
        for line in meta.read_text().splitlines()[:limit]:
            row = json.loads(line)
            inputs.append(_read(root / row["input"]))
            out = root / row["output"]
            if out.is_dir():
                frames = np.stack([_read(p) for p in sorted(out.glob("*.png"))])
                clips.append(frames)
                edits.append(frames[-1])
            else:
                edits.append(_read(out))
        if not inputs:
            raise ValueError(f"dataset={folder}: metadata.jsonl has no rows")
        return FrameBank(inputs, edits, clips)

    @property
    def size(self) -> tuple[int, int]:
        return self.inputs[0].shape[:2]

    def video(self, kind: str, rng: np.random.Generator) -> np.ndarray:
        """One 5-frame video (5, H, W, 3) uint8 of ``kind``; condition videos use the value 128 (≈ 0 in [−1, 1])
        as a marker and are zeroed exactly in :func:`to_tensor`."""
        if kind == "window" and self.clips:
            clip = self.clips[int(rng.integers(len(self.clips)))]
            start = int(rng.integers(len(clip) - 4))
            return clip[start : start + 5]
        i = int(rng.integers(len(self.inputs)))
        if kind == "condition":
            return np.stack([self.inputs[i]] + [np.full_like(self.inputs[i], 128)] * 4)
        return np.stack([self.inputs[i]] + [self.edits[i]] * 4)


def to_tensor(videos: list[np.ndarray], zero_tail: list[bool]) -> Tensor:
    """uint8 videos (F, H, W, 3) -> (B, 3, F, H, W) in [−1, 1]; condition videos get exact zeros after frame 0."""
    x = torch.from_numpy(np.stack(videos)).permute(0, 4, 1, 2, 3).float().div(127.5).sub(1.0)
    for b, zero in enumerate(zero_tail):
        if zero:
            x[b, :, 1:] = 0.0
    return x


def background(frame: np.ndarray) -> np.ndarray:
    """(3,) a frame's background colour: the per-channel median of its border pixels."""
    border = np.concatenate([frame[0], frame[-1], frame[:, 0], frame[:, -1]])
    return np.median(border, axis=0)


def _object_crop(frame: np.ndarray, crop: int, rng: np.random.Generator, fallback: tuple[int, int]) -> tuple[int, int]:
    """A crop's top-left corner that puts a random non-background pixel of ``frame`` (H, W, 3) inside it."""
    h, w, _ = frame.shape
    ys, xs = np.nonzero(np.abs(frame.astype(np.int16) - background(frame)).max(-1) > FG_THRESHOLD * 127.5)
    if len(ys) == 0:
        return fallback
    i = int(rng.integers(len(ys)))
    y = int(np.clip(ys[i] - rng.integers(crop), 0, h - crop))
    x = int(np.clip(xs[i] - rng.integers(crop), 0, w - crop))
    return y, x


def sample_batch(bank: FrameBank, cfg: VAETrainConfig, rng: np.random.Generator) -> Tensor:
    """(B, 3, 5, crop, crop): kinds drawn by ``cfg.mix``, one crop position per video."""
    p = np.asarray(cfg.mix) / sum(cfg.mix)
    kinds = [KINDS[int(k)] for k in rng.choice(3, size=cfg.batch_size, p=p)]
    h, w = bank.size
    videos = []
    for kind in kinds:
        v = bank.video(kind, rng)
        y, x = int(rng.integers(h - cfg.crop + 1)), int(rng.integers(w - cfg.crop + 1))
        if rng.random() < cfg.object_crops:
            y, x = _object_crop(v[-1] if kind != "condition" else v[0], cfg.crop, rng, (y, x))
        videos.append(v[:, y : y + cfg.crop, x : x + cfg.crop])
    return to_tensor(videos, [k == "condition" for k in kinds])


def vae_loss(
    vae: WanVAE,
    video: Tensor,
    kl_weight: float,
    generator: torch.Generator,
    sample: bool = False,
    mse_l1_mix: float = 0.1,
    fg_weight: float = 0.0,
) -> tuple[Tensor, dict]:
    """MSE + 0.1 · L1 reconstruction of the posterior mean (or a reparameterised sample) + ``kl_weight`` · mean KL
    per latent element (without sampling, its mean² term keeps the latents small). ``fg_weight``: each pixel that
    differs from its frame's background (the median of frame 0's border, > FG_THRESHOLD in any channel) weighs
    1 + fg_weight (a condition video's zero frames excepted), so that small objects' colours are not outvoted by
    the flat background."""
    mean, logvar = vae.encode_moments(video).chunk(2, dim=1)  # (B, z, T, h, w) each
    logvar = logvar.clamp(-30.0, 20.0)
    z = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=generator) if sample else mean
    recon = vae.decode_step(z)[0]  # (B, 3, F, H, W), not clamped
    err = recon - video
    l1, mse = err.abs().mean(), err.pow(2).mean()
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()
    if fg_weight > 0:
        w = foreground_weight(video, fg_weight)  # (B, 1, F, H, W), mean 1
        loss = (w * err.pow(2)).mean() + (w * err.abs()).mean() * mse_l1_mix + kl_weight * kl
    else:
        loss = mse + l1 * mse_l1_mix + kl_weight * kl
    return loss, {"l1": float(l1.detach()), "mse": float(mse.detach()), "kl": float(kl.detach())}


def foreground_weight(video: Tensor, fg_weight: float) -> Tensor:
    """(B, 1, F, H, W) per-pixel loss weights of ``video`` (B, 3, F, H, W) in [−1, 1], normalised to mean 1:
    1 + fg_weight where a pixel differs from frame 0's background by more than FG_THRESHOLD in a channel (a
    condition video's all-zero frames excepted), 1 elsewhere."""
    frame0 = video[:, :, 0].permute(0, 2, 3, 1).detach().cpu().numpy()  # (B, H, W, 3)
    bg = video.new_tensor(np.stack([background(f) for f in frame0]))  # (B, 3)
    fg = (video - bg[:, :, None, None, None]).abs().amax(1, keepdim=True) > FG_THRESHOLD
    fg &= video.ne(0).flatten(3).any(-1).any(1, keepdim=True)[..., None, None]  # not a condition's zero frame
    w = 1.0 + fg_weight * fg.float()
    return w / w.mean()


def psnr(a: Tensor, b: Tensor) -> float:
    """PSNR in dB of two videos in [−1, 1] (on the 0–255 scale)."""
    mse = ((a.clamp(-1, 1) - b.clamp(-1, 1)) * 127.5).pow(2).mean().item()
    return float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)


@torch.no_grad()
def latent_stats(vae: WanVAE, bank: FrameBank, n: int, seed: int) -> tuple[list[float], list[float], float]:
    """Per-channel mean and std of the posterior means of ``n`` whole-frame pair/condition videos, and their
    reconstruction PSNR (dB)."""
    rng = np.random.default_rng([seed, 1])
    zs, scores = [], []
    for start in range(0, n, 8):
        kinds = ["pair" if rng.random() < 0.5 else "condition" for _ in range(min(8, n - start))]
        video = to_tensor([bank.video(k, rng) for k in kinds], [k == "condition" for k in kinds])
        mean = vae.encode_moments(video).chunk(2, dim=1)[0]
        scores.append(psnr(vae.decode_raw(mean), video))
        zs.append(mean.transpose(0, 1).reshape(mean.shape[1], -1))
    z = torch.cat(zs, dim=1)  # (z_dim, N)
    return z.mean(1).tolist(), z.std(1).clamp_min(1e-4).tolist(), float(np.mean(scores))


def train_vae(
    cfg: VAETrainConfig,
    vae_cfg: VAEConfig,
    threads: int | None = None,
    snapshot: Callable[[int, WanVAE, FrameBank], None] | None = None,
) -> tuple[WanVAE, dict]:
    """Train a VAE of ``vae_cfg`` from seeded random weights; returns it (with measured latent statistics in its
    config) and a report {steps, seconds, frames_per_s, loss curve, psnr_db, latents_mean, latents_std}.
    ``snapshot(step, vae, bank)`` is called every ``cfg.snapshot_every`` steps (the model in train mode; the
    time it takes is not counted in ``train_seconds``)."""
    if threads:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    bank = FrameBank.read(cfg.dataset, cfg.limit)
    h, w = bank.size
    if cfg.crop > min(h, w):
        raise ValueError(f"crop={cfg.crop} is larger than the dataset's {h}×{w} frames")
    read_s = time.perf_counter() - t0
    torch.manual_seed(cfg.init_seed)
    vae = WanVAE(vae_cfg).init_weights(torch.Generator().manual_seed(cfg.init_seed)).train()
    if cfg.init_gain != 1.0:
        with torch.no_grad():
            for p in vae.parameters():
                if p.ndim >= 2:
                    p.mul_(cfg.init_gain)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, cfg))
    rng, gen = np.random.default_rng([cfg.seed, 0]), torch.Generator().manual_seed(cfg.seed)
    curve, t_train, paused = [], time.perf_counter(), 0.0
    for step in range(1, cfg.steps + 1):
        video = sample_batch(bank, cfg, rng)
        loss, parts = vae_loss(vae, video, cfg.kl_weight, gen, cfg.sample, fg_weight=cfg.fg_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % cfg.log_every == 0 or step == cfg.steps:
            elapsed = time.perf_counter() - t_train - paused
            curve.append({"step": step, "loss": float(loss.detach()), **parts, "seconds": round(elapsed, 1)})
            log.info("vae step %d/%d  loss %.4f  l1 %.4f  kl %.3f  %.0fs", step, cfg.steps, float(loss.detach()),
                     parts["l1"], parts["kl"], elapsed)  # fmt: skip
        if snapshot is not None and cfg.snapshot_every and step % cfg.snapshot_every == 0 and step < cfg.steps:
            t_snap = time.perf_counter()
            snapshot(step, vae, bank)
            vae.train()
            paused += time.perf_counter() - t_snap
    train_s = time.perf_counter() - t_train - paused
    vae.eval()
    mean, std, score = latent_stats(vae, bank, cfg.stats_videos, cfg.seed)
    vae.cfg = dataclasses.replace(vae.cfg, latents_mean=tuple(mean), latents_std=tuple(std))
    frames = cfg.steps * cfg.batch_size * 5
    report = {
        "steps": cfg.steps,
        "read_seconds": round(read_s, 1),
        "train_seconds": round(train_s, 1),
        "frames_per_s": round(frames / train_s, 1),
        "samples_per_s": round(cfg.steps * cfg.batch_size / train_s, 2),
        "psnr_db": round(score, 2),
        "curve": curve,
        "latents_mean": mean,
        "latents_std": std,
    }
    return vae, report


def _lr_factor(step: int, cfg: VAETrainConfig) -> float:
    """Linear warm-up, then cosine to 10% (or constant)."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


__all__ = ["FrameBank", "VAETrainConfig", "latent_stats", "psnr", "train_vae", "vae_loss"]
