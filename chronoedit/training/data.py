"""Training examples: the pre-encoded cache format, a synthetic source, and the deterministic batch plan.

An example is what the DiT trains on, all pre-encoded (no text encoder, CLIP or VAE at training time):

    latents       (16, T, h, w)  normalised VAE latents of the target video: [input, edited × 4] (T = 2) for a
                                 pair, [input, 24 clip frames, edited × 4] (T = 8) for a video-prior clip
    cond_latents  (16, T, h, w)  normalised VAE latents of [input, zeros × (F − 1)] (the inference condition)
    context       (Lt, D)        UMT5 states of the prompt's real tokens (zero padding to 512 is implicit)
    clip          (Li, Di)       CLIP penultimate-layer tokens of the input image

The order of examples is a pure function of (data seed, kind, epoch): one permutation per epoch and kind. Step
``s`` takes the next ``batch_size`` positions of one kind's stream (pairs, or video clips with probability
``video_ratio``, also drawn from (seed, s)); process ``r`` of ``W`` takes the slots [r·B/W, (r + 1)·B/W). The data
position saved in a checkpoint is the cursor of each stream.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from chronoedit.checkpoint.errors import CheckpointError
from chronoedit.checkpoint.safetensors_io import SafetensorsFile, read_tensor
from chronoedit.training.config import DataConfig, SyntheticConfig
from chronoedit.training.objective import DOMAIN_KIND, DOMAIN_ORDER, generator

log = logging.getLogger("chronoedit.training")

LATENT_CHANNELS = 16
KINDS = {"pair": 2, "video": 8}  # kind -> latent frames (a cache's clips may have other lengths ≥ 3, all alike)
# The cache folder written by train/preencode.py.
CACHE_INDEX = "index.jsonl"  # one row per example: {"file", "kind", "prompt", "source"}
CACHE_META = "meta.json"  # {"height", "width", "text_dim", "image_dim", "counts", "skipped", …}
EMPTY_PROMPT = "empty_prompt.safetensors"  # {"context": (Lt, D)}: the embedding of "" (text dropout)
EXAMPLE_KEYS = ("latents", "cond_latents", "context", "clip")


class EncoderMismatch(ValueError):
    """The cache was encoded for another model: an error, not a skipped example."""


@dataclass
class Example:
    latents: Tensor
    cond_latents: Tensor
    context: Tensor
    clip: Tensor


@dataclass
class Batch:
    latents: Tensor  # (B, 16, T, h, w)
    cond_latents: Tensor  # (B, 16, T, h, w)
    context: Tensor  # (B, Lt_max, D), zero-padded
    clip: Tensor  # (B, Li, Di)


def collate(examples: Sequence[Example]) -> Batch:
    """Stack examples of one shape; text contexts are zero-padded to the longest (the DiT pads to 512 anyway)."""
    lt = max(e.context.shape[0] for e in examples)
    ctx = [torch.nn.functional.pad(e.context, (0, 0, 0, lt - e.context.shape[0])) for e in examples]
    return Batch(
        latents=torch.stack([e.latents for e in examples]),
        cond_latents=torch.stack([e.cond_latents for e in examples]),
        context=torch.stack(ctx),
        clip=torch.stack([e.clip for e in examples]),
    )


class SyntheticSource:
    """Seeded random examples with the shapes of real ones; latent frame 0 of the target equals the condition's
    (as the causal VAE gives), the condition's other frames are one fixed "encoded black frame" latent."""

    def __init__(self, cfg: SyntheticConfig, text_dim: int, image_dim: int) -> None:
        self.cfg = cfg
        self.counts = {"pair": cfg.pairs, "video": cfg.videos}
        g = generator(cfg.seed, 0)
        black = torch.randn(LATENT_CHANNELS, 1, cfg.height, cfg.width, generator=g) * 0.5
        self._examples: dict[str, list[Example]] = {}
        for kind, n in self.counts.items():
            t = KINDS[kind]
            out = []
            for _ in range(n):
                lat = torch.randn(LATENT_CHANNELS, t, cfg.height, cfg.width, generator=g)
                cond = torch.cat([lat[:, :1], black.expand(-1, t - 1, -1, -1)], dim=1)
                ctx = torch.randn(cfg.text_tokens, text_dim, generator=g) * 0.5
                clip = torch.randn(cfg.image_tokens, image_dim, generator=g)
                out.append(Example(lat, cond, ctx, clip))
            self._examples[kind] = out
        self.empty_context = torch.zeros(1, text_dim)
        self.skipped = 0

    def load(self, kind: str, index: int) -> Example:
        return self._examples[kind][index]


def _read_meta(path: Path) -> dict:
    """The cache's meta.json ({} if absent); a corrupt one is a ValueError naming its line and column."""
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}:{e.colno}: invalid JSON ({e.msg})") from e
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: not a JSON object")
    return meta


class CacheSource:
    """A pre-encoded dataset folder. Every file's header is checked on open; an unreadable or misshaped example is
    skipped with a counted warning (the same on every process, so all agree on the examples)."""

    def __init__(self, folder: str | Path, text_dim: int, image_dim: int | None) -> None:
        self.folder = Path(folder)
        index = self.folder / CACHE_INDEX
        if not index.is_file():
            raise ValueError(f"{self.folder} is not a pre-encoded dataset (no {CACHE_INDEX}; run train/preencode.py)")
        self.meta = _read_meta(self.folder / CACHE_META)
        self._files: dict[str, list[Path]] = {k: [] for k in KINDS}
        self.skipped = 0
        shapes: dict[str, tuple[int, int, int]] = {}  # kind -> (T, h, w) of its first usable example
        for n, line in enumerate(index.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                kind, path = row["kind"], self.folder / row["file"]
                if kind not in KINDS:
                    raise ValueError(f"unknown kind {kind!r}")
                dims = self._check(path, kind, text_dim, image_dim)
                want = shapes.get(kind) or next(((dims[0], *s[1:]) for s in shapes.values()), dims)
                if dims != want:
                    raise ValueError(f"latent frames × size {dims} differ from the dataset's {kind}s' {want}")
                shapes[kind] = dims
            except EncoderMismatch:
                raise
            except (ValueError, KeyError, TypeError, json.JSONDecodeError, CheckpointError) as e:
                self.skipped += 1
                log.warning("skipping example %s:%d (%s) [%d skipped so far]", index, n, e, self.skipped)
                continue
            self._files[kind].append(path)
        self.counts = {k: len(v) for k, v in self._files.items()}
        if not any(self.counts.values()):
            raise ValueError(f"{self.folder}: no usable examples ({self.skipped} skipped)")
        if self.skipped:
            log.warning("%s: %d examples skipped, %s used", self.folder, self.skipped, self.counts)
        empty = self.folder / EMPTY_PROMPT
        self.empty_context = read_tensor(SafetensorsFile(empty)["context"]) if empty.is_file() else None

    @staticmethod
    def _check(path: Path, kind: str, text_dim: int, image_dim: int | None) -> tuple[int, int, int]:
        f = SafetensorsFile(path)  # raises CheckpointError when missing, truncated or corrupt
        missing = [k for k in EXAMPLE_KEYS if k not in f]
        if missing:
            raise ValueError(f"{path.name} lacks {missing}")
        lat, cond, ctx, clip = (f[k].shape for k in EXAMPLE_KEYS)
        frames_ok = len(lat) == 4 and (lat[1] == 2 if kind == "pair" else lat[1] >= 3)
        if not frames_ok or lat[0] != LATENT_CHANNELS or cond != lat:
            want = "(16, 2, h, w)" if kind == "pair" else "(16, T ≥ 3, h, w)"
            raise ValueError(f"{path.name}: latents {lat} / cond_latents {cond}, a {kind} needs {want}")
        if len(ctx) != 2 or len(clip) != 2:
            raise ValueError(f"{path.name}: context {ctx} / clip {clip} must be (tokens, width)")
        if ctx[1] != text_dim or (image_dim is not None and clip[1] != image_dim):
            raise EncoderMismatch(
                f"{path}: text width {ctx[1]} / image width {clip[1]}, the model takes text_dim={text_dim}, "
                f"image_dim={image_dim} (pre-encode with the encoders of the model being trained)"
            )
        return lat[1], lat[2], lat[3]

    def load(self, kind: str, index: int) -> Example:
        f = SafetensorsFile(self._files[kind][index])
        return Example(*(read_tensor(f[k]).float() for k in EXAMPLE_KEYS))


def open_source(cfg: DataConfig, text_dim: int, image_dim: int | None) -> SyntheticSource | CacheSource:
    if cfg.synthetic is not None:
        return SyntheticSource(cfg.synthetic, text_dim, image_dim or 1)
    return CacheSource(cfg.cache, text_dim, image_dim)


def step_kind(cfg: DataConfig, step: int) -> str:
    """Pair or video clip for ``step``: a coin of probability ``video_ratio`` from (data seed, step)."""
    if cfg.video_ratio <= 0:
        return "pair"
    if cfg.video_ratio >= 1:
        return "video"
    return (
        "video" if float(torch.rand((), generator=generator(cfg.seed, DOMAIN_KIND, step))) < cfg.video_ratio else "pair"
    )


def epoch_order(seed: int, kind: str, count: int, epoch: int) -> list[int]:
    """The order of a kind's examples in ``epoch``: a permutation drawn from (seed, kind, epoch)."""
    return torch.randperm(count, generator=generator(seed, DOMAIN_ORDER, list(KINDS).index(kind), epoch)).tolist()


@dataclass
class StepPlan:
    step: int
    kind: str
    indices: list[int]  # example index of every global-batch slot (len = batch_size)


class BatchPlanner:
    """Which examples each step trains on; its state (the stream cursors) is the data position."""

    def __init__(self, cfg: DataConfig, counts: dict[str, int], batch_size: int) -> None:
        self.cfg, self.counts, self.batch_size = cfg, dict(counts), batch_size
        need = [k for k, r in (("pair", 1 - cfg.video_ratio), ("video", cfg.video_ratio)) if r > 0 and not counts[k]]
        if need:
            raise ValueError(f"data.video_ratio={cfg.video_ratio} needs {need} examples; the dataset has {counts}")
        self.cursors = {k: 0 for k in KINDS}
        self._orders: dict[tuple[str, int], list[int]] = {}

    def example_index(self, kind: str, position: int) -> int:
        """The example at ``position`` of a kind's stream (epoch = position // count, shuffled per epoch)."""
        epoch, i = divmod(position, self.counts[kind])
        if (kind, epoch) not in self._orders:
            self._orders = {k: v for k, v in self._orders.items() if k[0] != kind}  # one epoch per kind kept
            self._orders[kind, epoch] = epoch_order(self.cfg.seed, kind, self.counts[kind], epoch)
        return self._orders[kind, epoch][i]

    def next(self, step: int) -> StepPlan:
        kind = step_kind(self.cfg, step)
        start = self.cursors[kind]
        idx = [self.example_index(kind, start + j) for j in range(self.batch_size)]
        self.cursors[kind] = start + self.batch_size
        return StepPlan(step, kind, idx)

    def state_dict(self) -> dict:
        return {"cursors": dict(self.cursors), "counts": dict(self.counts)}

    def load_state_dict(self, state: dict) -> None:
        if state["counts"] != self.counts:
            raise ValueError(
                f"the dataset changed since the checkpoint: {state['counts']} examples then, {self.counts} now"
            )
        self.cursors = {k: int(v) for k, v in state["cursors"].items()}


def rank_slots(batch_size: int, rank: int, world: int) -> range:
    """The global-batch slots process ``rank`` trains on (contiguous)."""
    per = batch_size // world
    return range(rank * per, (rank + 1) * per)


__all__ = [
    "CACHE_INDEX",
    "CACHE_META",
    "EMPTY_PROMPT",
    "EXAMPLE_KEYS",
    "KINDS",
    "Batch",
    "BatchPlanner",
    "CacheSource",
    "Example",
    "StepPlan",
    "SyntheticSource",
    "collate",
    "epoch_order",
    "open_source",
    "rank_slots",
    "step_kind",
]
