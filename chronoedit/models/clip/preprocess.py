"""Image preprocessing of the CLIP image encoder, as transformers' ``CLIPImageProcessor`` (PIL backend) does it.

Per image: to RGB (transparency composited onto white), resize (shortest edge, PIL resampling from the config,
bicubic for CLIP), centre crop (zero-padded if the image is smaller), ``uint8 × rescale_factor`` computed in
float64 then stored as float32, ``(x − mean) / std`` in float32. Output ``(B, 3, crop_h, crop_w)`` float32.
All sizes and constants come from the checkpoint's ``preprocessor_config.json``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

CONFIG_NAME = "preprocessor_config.json"
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# config keys that carry no processing parameter
_METADATA = {"image_processor_type", "feature_extractor_type", "processor_class", "_processor_class", "auto_map"}


def _size(value: Any, what: str) -> dict[str, int]:
    """A transformers size: an int (shortest edge for ``size``, square for ``crop_size``) or a dict."""
    if isinstance(value, int):
        return {"shortest_edge": value} if what == "size" else {"height": value, "width": value}
    if isinstance(value, Mapping) and (set(value) == {"shortest_edge"} or set(value) == {"height", "width"}):
        return {k: int(v) for k, v in value.items()}
    raise ValueError(f"{what}={value!r}: expected an int, {{'shortest_edge'}} or {{'height', 'width'}}")


def composite_on_white(image: Image.Image) -> Image.Image:
    """RGB of ``image`` (alpha or a transparency colour) composited onto an opaque white background."""
    rgba = image.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")


@dataclass(frozen=True)
class ImagePreprocessor:
    """PIL images -> normalised ``(B, 3, crop_h, crop_w)`` float32 pixels for :class:`CLIPVisionTower`."""

    size: dict[str, int] = field(default_factory=lambda: {"shortest_edge": 224})
    resample: int = Image.Resampling.BICUBIC
    crop_size: dict[str, int] = field(default_factory=lambda: {"height": 224, "width": 224})
    rescale_factor: float = 1 / 255
    image_mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    image_std: tuple[float, ...] = OPENAI_CLIP_STD
    do_resize: bool = True
    do_center_crop: bool = True
    do_rescale: bool = True
    do_normalize: bool = True
    do_convert_rgb: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", _size(self.size, "size"))
        object.__setattr__(self, "crop_size", _size(self.crop_size, "crop_size"))
        object.__setattr__(self, "image_mean", tuple(float(m) for m in self.image_mean))
        object.__setattr__(self, "image_std", tuple(float(s) for s in self.image_std))
        if int(self.resample) not in {int(r) for r in Image.Resampling}:
            raise ValueError(f"resample={self.resample!r} is not a PIL resampling filter")
        if len(self.image_mean) != 3 or len(self.image_std) != 3 or min(self.image_std) <= 0:
            raise ValueError(f"image_mean={self.image_mean} / image_std={self.image_std}: need 3 values, std > 0")
        if min(self.size.values()) <= 0 or min(self.crop_size.values()) <= 0:
            raise ValueError(f"size={self.size} and crop_size={self.crop_size} must be positive")
        if not self.do_convert_rgb:
            raise ValueError("do_convert_rgb=False is not supported (the tower takes 3-channel images)")

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ImagePreprocessor:
        """From a ``preprocessor_config.json`` dict; unknown processing keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(k for k in config if k not in known and k not in _METADATA)
        if unknown:
            raise ValueError(f"image processor config has unsupported keys: {', '.join(unknown)}")
        return cls(**{k: v for k, v in config.items() if k in known})

    @classmethod
    def from_folder(cls, path: str | os.PathLike) -> ImagePreprocessor:
        """From ``path/preprocessor_config.json`` (a Hub ``image_processor/`` folder) or that file itself."""
        path = Path(path)
        file = path / CONFIG_NAME if path.is_dir() else path
        try:
            return cls.from_config(json.loads(file.read_text()))
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{file}: cannot read the image processor config ({e})") from e

    @property
    def output_size(self) -> tuple[int, int]:
        """(height, width) of the processed images (the crop, when cropping)."""
        if self.do_center_crop:
            return self.crop_size["height"], self.crop_size["width"]
        if "height" in self.size:
            return self.size["height"], self.size["width"]
        raise ValueError("without a centre crop, a shortest-edge resize has no fixed output size")

    # ------------------------------------------------------------------ steps
    @staticmethod
    def to_rgb(image: Image.Image) -> Image.Image:
        """RGB; images with an alpha band or a transparency colour are composited onto white."""
        if "A" in image.getbands() or image.info.get("transparency") is not None:
            return composite_on_white(image)
        return image.convert("RGB")

    def resized_shape(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) after the resize step."""
        if "height" in self.size:
            return self.size["height"], self.size["width"]
        edge = self.size["shortest_edge"]
        short, long = min(height, width), max(height, width)
        new_long = int(edge * long / short)
        return (new_long, edge) if width <= height else (edge, new_long)

    def center_crop(self, x: np.ndarray) -> np.ndarray:
        """(C, H, W) -> (C, crop_h, crop_w), centred; zero padding (centred, rounding up) where too small."""
        ch, cw = self.crop_size["height"], self.crop_size["width"]
        _, h, w = x.shape
        top, left = (h - ch) // 2, (w - cw) // 2
        if top >= 0 and left >= 0:
            return x[:, top : top + ch, left : left + cw]
        ph, pw = max(ch, h), max(cw, w)
        pad_top, pad_left = (ph - h + 1) // 2, (pw - w + 1) // 2
        padded = np.zeros((x.shape[0], ph, pw), dtype=x.dtype)
        padded[:, pad_top : pad_top + h, pad_left : pad_left + w] = x
        top, left = top + pad_top, left + pad_left
        return padded[:, max(0, top) : max(0, top) + ch, max(0, left) : max(0, left) + cw]

    def process(self, image: Image.Image) -> np.ndarray:
        """One PIL image -> (3, H, W) float32."""
        if not isinstance(image, Image.Image):
            raise ValueError(f"expected a PIL.Image.Image, got {type(image).__name__}")
        if image.width == 0 or image.height == 0:
            raise ValueError(f"image has no pixels ({image.width}×{image.height})")
        image = self.to_rgb(image)
        if self.do_resize:
            h, w = self.resized_shape(image.height, image.width)
            image = image.resize((w, h), resample=Image.Resampling(int(self.resample)))
        x = np.asarray(image).transpose(2, 0, 1)  # (3, H, W) uint8
        if self.do_center_crop:
            x = self.center_crop(x)
        if self.do_rescale:
            x = (x.astype(np.float64) * self.rescale_factor).astype(np.float32)
        x = x.astype(np.float32)
        if self.do_normalize:
            mean = np.asarray(self.image_mean, dtype=np.float32)[:, None, None]
            std = np.asarray(self.image_std, dtype=np.float32)[:, None, None]
            x = (x - mean) / std
        return x

    def __call__(self, images: Image.Image | Sequence[Image.Image]) -> Tensor:
        """PIL image(s) -> (B, 3, crop_h, crop_w) float32."""
        if isinstance(images, Image.Image):
            images = [images]
        if len(images) == 0:
            raise ValueError("no images to preprocess")
        arrays = [self.process(im) for im in images]
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            raise ValueError(f"processed images differ in shape {sorted(shapes)}; enable the centre crop")
        return torch.from_numpy(np.stack(arrays))


__all__ = ["OPENAI_CLIP_MEAN", "OPENAI_CLIP_STD", "ImagePreprocessor"]
