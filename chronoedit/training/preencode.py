"""Pre-encode a training dataset once: VAE latents, the inference condition, UMT5 and CLIP embeddings to disk, so
that training holds only the DiT.

Dataset folder: ``metadata.jsonl`` (or ``metadata.csv`` with a header) with one row per example::

    {"input": "in/0001.png", "output": "out/0001.png", "prompt": "Add a red hat"}        an edit pair
    {"input": "in/0002.png", "output": "clips/0002.mp4", "prompt": "Open the door"}      a video-prior clip

Paths are relative to the folder. ``output`` is an image (an edit pair: [input, edited × 4] → 2 latent frames)
or a video — a folder of frames, an animated GIF/WebP, or a video file read through imageio — (a video-prior
clip: ``clip_frames`` frames sampled evenly with the row's input as frame 0, then the clip's last frame, the
edit, × 4 → 8 latent frames with the default 25). An unreadable image or video is skipped with a counted warning.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from chronoedit.checkpoint.safetensors_io import save_file
from chronoedit.files import read_jsonl, write_text
from chronoedit.pipeline.condition import check_num_frames, first_frame_video
from chronoedit.pipeline.images import image_to_tensor, load_image, to_rgb
from chronoedit.training.data import CACHE_INDEX, CACHE_META, EMPTY_PROMPT
from chronoedit.training.preencode_config import PreencodeConfig

log = logging.getLogger("chronoedit.training")

METADATA = ("metadata.jsonl", "metadata.csv")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
VIDEO_SUFFIXES = {".mp4", ".webm", ".mov", ".avi", ".mkv", ".gif"}
EDIT_REPEATS = 4  # the edited frame fills one latent frame: [input, edited × 4] = 5 frames → 2 latents


@dataclass
class Row:
    line: int
    input: Path
    output: Path
    prompt: str

    @property
    def is_video(self) -> bool:
        return self.output.is_dir() or self.output.suffix.lower() in VIDEO_SUFFIXES


@dataclass
class Encoders:
    """The three encoders as functions (so the tool can be tested without real models)."""

    encode_video: Callable[[Tensor], Tensor]  # (B, 3, F, H, W) in [−1, 1] -> normalised latents (B, 16, T, h, w)
    encode_text: Callable[[list[str]], Tensor]  # prompts -> (B, 512, D), zeros after the real tokens
    encode_image: Callable[[Image.Image], Tensor]  # the input image -> CLIP tokens (1, Li, Di)


def read_metadata(folder: str | Path) -> list[Row]:
    """Every row of the dataset's metadata; a malformed row is an error naming its line (nothing is encoded)."""
    folder = Path(folder)
    found = [folder / m for m in METADATA if (folder / m).is_file()]
    if not found:
        raise ValueError(f"dataset {folder} has no {' or '.join(METADATA)}")
    path = found[0]
    if path.suffix == ".csv":
        with open(path, newline="") as f:
            raw = [(n, dict(r)) for n, r in enumerate(csv.DictReader(f), 2)]
    else:
        raw = list(read_jsonl(path))  # a line that is not JSON: "<file>:<line>:<column>: invalid JSON (…)"
    rows = []
    for n, r in raw:
        if not isinstance(r, dict) or not all(isinstance(r.get(k), str) and r[k] for k in ("input", "output")):
            raise ValueError(f"{path}:{n}: each row needs 'input' and 'output' paths and a 'prompt'")
        if not isinstance(r.get("prompt"), str):
            raise ValueError(f"{path}:{n}: 'prompt' must be a string")
        unknown = set(r) - {"input", "output", "prompt"}
        if unknown:
            raise ValueError(f"{path}:{n}: unknown fields {sorted(unknown)}")
        rows.append(Row(n, folder / r["input"], folder / r["output"], r["prompt"]))
    if not rows:
        raise ValueError(f"{path} has no rows")
    return rows


def fit_image(im: Image.Image, height: int, width: int) -> Image.Image:
    """Resize (bicubic) to cover height × width, then centre-crop to it."""
    im = to_rgb(im)
    scale = max(width / im.width, height / im.height)
    size = (max(width, round(im.width * scale)), max(height, round(im.height * scale)))
    if im.size != size:
        im = im.resize(size, resample=Image.Resampling.BICUBIC)
    left, top = (im.width - width) // 2, (im.height - height) // 2
    return im.crop((left, top, left + width, top + height))


def read_video(path: Path) -> list[Image.Image]:
    """All frames of a clip: a folder of images (sorted by name), an animated GIF/WebP, or a video via imageio."""
    try:
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            return [load_image(p) for p in files]
        if path.suffix.lower() in {".gif", ".webp"}:
            frames = []
            with Image.open(path) as im:
                for i in range(getattr(im, "n_frames", 1)):
                    im.seek(i)
                    frames.append(to_rgb(im.copy()))
            return frames
        try:
            import imageio.v3 as iio  # the optional "video" extra
        except ImportError as e:
            raise ValueError(f"reading {path.suffix} videos needs imageio (pip install -e '.[video]')") from e
        return [Image.fromarray(np.asarray(f)) for f in iio.imiter(path)]
    except ValueError:
        raise
    except Exception as e:  # any decoder failure: a corrupt clip
        raise ValueError(f"cannot read video {path}: {e}") from e


def clip_video(frames: list[Image.Image], first: Image.Image, clip_frames: int) -> list[Image.Image]:
    """[input, ``clip_frames`` − 1 evenly sampled clip frames, the clip's last frame × 4]."""
    if len(frames) < 2:
        raise ValueError(f"a video-prior clip needs at least 2 frames, got {len(frames)}")
    idx = np.linspace(0, len(frames) - 1, clip_frames + 1).round().astype(int)
    return [first, *(frames[i] for i in idx[1:-1])] + [frames[idx[-1]]] * EDIT_REPEATS


def trim_context(context: Tensor) -> Tensor:
    """(512, D) with zeros after the real tokens -> (Lt, D), the real tokens only (at least one row)."""
    nonzero = context.abs().sum(dim=-1) > 0
    used = int(nonzero.nonzero().max()) + 1 if bool(nonzero.any()) else 1
    return context[:used]


def load_row(row: Row, cfg: PreencodeConfig) -> tuple[str, Tensor, Image.Image]:
    """(kind, video (1, 3, F, H, W) in [−1, 1], the fitted input image) of one row; ValueError when an image or
    video cannot be read."""
    h, w = cfg.height, cfg.width
    first = fit_image(load_image(row.input), h, w)
    if row.is_video:
        frames = clip_video([fit_image(f, h, w) for f in read_video(row.output)], first, cfg.clip_frames)
        kind = "video"
    else:
        frames = [first] + [fit_image(load_image(row.output), h, w)] * EDIT_REPEATS
        kind = "pair"
    check_num_frames(len(frames))
    return kind, torch.stack([image_to_tensor(f, h, w)[0] for f in frames], dim=1)[None], first


def encode_loaded(
    loaded: list[tuple[str, Tensor, Image.Image]], prompts: list[str], enc: Encoders, dtype: torch.dtype
) -> list[dict[str, Tensor]]:
    """The tensors of loaded rows of one frame count: the target videos in one VAE call, their condition videos
    in another (one row: exactly the pipeline's ``encode_condition``), the prompts in one text-encoder call."""
    num_frames = {v.shape[2] for _, v, _ in loaded}
    if len(num_frames) != 1:
        raise ValueError(f"one batch needs one frame count, got {sorted(num_frames)}")
    (f,) = num_frames
    videos = [v for _, v, _ in loaded]
    conds = [first_frame_video(v[:, :, 0], f) for v in videos]
    with torch.no_grad():
        latents = torch.cat([enc.encode_video(torch.cat(videos)), enc.encode_video(torch.cat(conds))])  # (2n, …)
        contexts = enc.encode_text(prompts)
        clips = [enc.encode_image(first)[0] for _, _, first in loaded]
    n = len(loaded)
    out = []
    for i in range(n):
        tensors = {"latents": latents[i], "cond_latents": latents[n + i], "context": trim_context(contexts[i]),
                   "clip": clips[i]}  # fmt: skip
        out.append({k: v.to(dtype).cpu() for k, v in tensors.items()})
    return out


def encode_row(row: Row, enc: Encoders, cfg: PreencodeConfig, dtype: torch.dtype) -> tuple[str, dict[str, Tensor]]:
    """(kind, tensors) of one example; ValueError when an image or video cannot be read."""
    loaded = load_row(row, cfg)
    return loaded[0], encode_loaded([loaded], [row.prompt], enc, dtype)[0]


def check_output(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"output {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"output {out} is not empty (pass overwrite=true to write into it)")


def preencode(cfg: PreencodeConfig, enc: Encoders, dtype: torch.dtype = torch.float32) -> dict:
    """Encode every row of ``cfg.dataset`` into ``cfg.output``; returns the summary written to meta.json."""
    rows = read_metadata(cfg.dataset)[: cfg.limit]
    out = Path(cfg.output)
    check_output(out, cfg.overwrite)
    out.mkdir(parents=True, exist_ok=True)
    (out / CACHE_INDEX).unlink(missing_ok=True)  # written last again: until then the folder is no dataset
    index, skipped = [], []
    for start in range(0, len(rows), cfg.batch):  # cfg.batch rows read, encoded per frame count, written in order
        loaded = {}
        for i, row in enumerate(rows[start : start + cfg.batch], start):
            try:
                loaded[i] = load_row(row, cfg)
            except ValueError as e:
                skipped.append({"line": row.line, "reason": str(e)})
                log.warning("skipping row %d: %s [%d skipped so far]", row.line, e, len(skipped))
        encoded = {}
        for frames in sorted({v.shape[2] for _, v, _ in loaded.values()}):
            ids = [i for i, (_, v, _) in loaded.items() if v.shape[2] == frames]
            batch = encode_loaded([loaded[i] for i in ids], [rows[i].prompt for i in ids], enc, dtype)
            encoded.update(zip(ids, batch))
        for i in sorted(encoded):
            name = f"{i:08d}.safetensors"
            save_file(encoded[i], out / name)
            index.append({"file": name, "kind": loaded[i][0], "prompt": rows[i].prompt, "source": rows[i].line})
    with torch.no_grad():
        save_file({"context": trim_context(enc.encode_text([""])[0]).to(dtype).cpu()}, out / EMPTY_PROMPT)
    counts = {k: sum(r["kind"] == k for r in index) for k in ("pair", "video")}
    meta = {"height": cfg.height, "width": cfg.width, "checkpoint": cfg.checkpoint, "counts": counts,
            "skipped": len(skipped), "skipped_rows": skipped}  # fmt: skip
    write_text(out / CACHE_META, json.dumps(meta, indent=1))
    write_text(out / CACHE_INDEX, "".join(json.dumps(r) + "\n" for r in index))  # last: marks the cache done
    return meta


def encoders_from_components(components, device: torch.device, dtype: torch.dtype, tiling=None) -> Encoders:
    """:class:`Encoders` over loaded pipeline :class:`~chronoedit.pipeline.components.Components`."""
    from chronoedit.models.precision import cast_model
    from chronoedit.models.text import encode_prompts

    c = components
    for module, dt in ((c.vae, dtype), (c.text_encoder, dtype), (c.image_encoder, torch.float32)):
        cast_model(module.to(device).eval(), dt)

    def video(v: Tensor) -> Tensor:
        return c.vae.encode(v.to(device, dtype), tiling=tiling).float()

    def text(prompts: list[str]) -> Tensor:
        return encode_prompts(c.text_encoder, c.tokenizer, prompts).float()

    def image(im: Image.Image) -> Tensor:
        return c.image_encoder(c.image_processor([im]).to(device)).float()

    return Encoders(video, text, image)


__all__ = [
    "Encoders",
    "Row",
    "clip_video",
    "encode_loaded",
    "encode_row",
    "encoders_from_components",
    "fit_image",
    "load_row",
    "preencode",
    "read_metadata",
    "read_video",
    "trim_context",
]
