"""The text side: prompt cleaning, the UMT5 tokenizer and the UMT5-XXL encoder."""

from chronoedit.models.text.config import UMT5_PRESETS, UMT5Config
from chronoedit.models.text.prompt import clean_prompt
from chronoedit.models.text.tokenizer import Tokenizer
from chronoedit.models.text.umt5 import UMT5Encoder, encode_prompts

__all__ = [
    "UMT5_PRESETS",
    "Tokenizer",
    "UMT5Config",
    "UMT5Encoder",
    "clean_prompt",
    "encode_prompts",
]
