"""The image side: CLIP preprocessing and the ViT-H/14 vision tower up to its penultimate block."""

from chronoedit.models.clip.config import CLIP_PRESETS, CLIPVisionConfig
from chronoedit.models.clip.preprocess import ImagePreprocessor
from chronoedit.models.clip.vision import CLIPVisionTower

__all__ = [
    "CLIP_PRESETS",
    "CLIPVisionConfig",
    "CLIPVisionTower",
    "ImagePreprocessor",
]
