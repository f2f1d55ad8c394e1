"""Image and video I/O: any PIL-readable image in, PNG frames / animated WebP / MP4 out."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from chronoedit.files import atomic_dir, atomic_path
from chronoedit.models.clip.preprocess import composite_on_white


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open an image as 8-bit RGB. RGBA is composited on white, grayscale expanded, 16-bit scaled to 8."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            return to_rgb(im)
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"cannot read image {path}: {e}") from e


def to_rgb(im: Image.Image) -> Image.Image:
    """8-bit RGB from any PIL mode (RGBA/LA/P with transparency composited on white; I;16/I/F rescaled)."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        im = Image.fromarray(np.clip(np.round(a / hi * 255.0), 0, 255).astype(np.uint8), mode="L")
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA"):
        return composite_on_white(im)
    return im.convert("RGB") if im.mode != "RGB" else im


def image_to_tensor(im: Image.Image, height: int, width: int) -> Tensor:
    """RGB image -> (1, 3, height, width) float32 in [−1, 1], resized with Lanczos (as the reference does)."""
    im = to_rgb(im)
    if im.size != (width, height):
        im = im.resize((width, height), resample=Image.Resampling.LANCZOS)
    a = np.asarray(im).astype(np.float32) / 255.0  # (H, W, 3)
    return torch.from_numpy(a).permute(2, 0, 1)[None] * 2.0 - 1.0


def video_to_unit(video: Tensor) -> Tensor:
    """(B, 3, F, H, W) in [−1, 1] -> the same in [0, 1] (float32), as the reference post-processes."""
    return (video.float() * 0.5 + 0.5).clamp(0, 1)


def unit_to_images(frames: Tensor) -> list[Image.Image]:
    """(F, 3, H, W) in [0, 1] -> PIL RGB frames (×255, rounded)."""
    arr = (frames.permute(0, 2, 3, 1).cpu().numpy() * 255.0).round().astype(np.uint8)
    return [Image.fromarray(a) for a in arr]


def save_png(im: Image.Image, path: str | os.PathLike) -> Path:
    """A PNG, written atomically (never half a file under ``path``)."""
    with atomic_path(path) as tmp:
        im.save(tmp, format="PNG")
    return Path(path)


def save_frames(frames: list[Image.Image], folder: str | os.PathLike) -> Path:
    """``folder/0000.png …``, the folder put in place only once every frame is written (an old one replaced)."""
    with atomic_dir(folder) as tmp:
        for n, frame in enumerate(frames):
            frame.save(tmp / f"{n:04d}.png", format="PNG")
    return Path(folder)


def save_webp(frames: list[Image.Image], path: str | os.PathLike, fps: int = 16) -> Path:
    """Animated WebP (lossless), always available through Pillow; written atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        frames[0].save(
            tmp, format="WEBP", save_all=True, append_images=frames[1:], duration=round(1000 / fps), loop=0,
            lossless=True,
        )  # fmt: skip
    return path


def save_mp4(frames: list[Image.Image], path: str | os.PathLike, fps: int = 16) -> Path | None:
    """MP4 (H.264) through the optional imageio-ffmpeg binding, written atomically; None when it is not
    installed."""
    try:
        import imageio.v2 as imageio  # optional extra "video"
    except ImportError:
        return None
    path = Path(path)
    try:
        # ffmpeg picks the container from the extension: the temporary name keeps it (video.tmp.mp4)
        with (
            atomic_path(path, keep_suffix=True) as tmp,
            imageio.get_writer(tmp, fps=fps, codec="libx264", quality=8, macro_block_size=1) as writer,
        ):
            for f in frames:
                writer.append_data(np.asarray(f))
    except (ImportError, RuntimeError, OSError):  # no ffmpeg binary behind imageio
        return None
    return path
