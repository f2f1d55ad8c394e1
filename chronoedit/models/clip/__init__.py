"""The image side: CLIP preprocessing and the ViT-H/14 vision tower up to its penultimate block."""

from chronoedit.models.clip.config import CLIP_PRESETS, CLIPVisionConfig, clip_preset
from chronoedit.models.clip.load import load_clip_vision
from chronoedit.models.clip.preprocess import ImagePreprocessor
from chronoedit.models.clip.vision import CLIPVisionTower

__all__ = [
    "CLIP_PRESETS",
    "CLIPVisionConfig",
    "CLIPVisionTower",
    "ImagePreprocessor",
    "clip_preset",
    "load_clip_vision",
]
