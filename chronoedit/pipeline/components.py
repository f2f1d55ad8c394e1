"""The loaded models of an edit, and where they come from (a checkpoint, or the built-in tiny demo)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from chronoedit.models.clip import CLIPVisionTower, ImagePreprocessor
    from chronoedit.models.dit import ChronoEditDiT
    from chronoedit.models.text import Tokenizer, UMT5Encoder
    from chronoedit.models.vae import WanVAE
    from chronoedit.sampling import SamplerConfig

TINY = "tiny"  # the built-in demo checkpoint name


@dataclass
class Components:
    dit: ChronoEditDiT
    vae: WanVAE
    text_encoder: UMT5Encoder
    tokenizer: Tokenizer
    image_encoder: CLIPVisionTower
    image_processor: ImagePreprocessor
    default_sampler: SamplerConfig | None = None  # from the checkpoint's scheduler config
    source: str = ""  # where it was loaded from, for logs
    random_weights: bool = False  # True for the tiny demo: its output is noise-like by construction
    extras: dict = field(default_factory=dict)  # e.g. the path of a LoRA shipped with the checkpoint


@torch.no_grad()
def tiny_components(seed: int = 0) -> Components:
    """The tiny demo model: every component at its tiny preset with seeded random weights, and the small
    sentencepiece tokenizer shipped in ``chronoedit/assets/tiny_tokenizer``. Runs on a CPU in seconds."""
    from importlib.resources import files

    from chronoedit.models.clip import CLIP_PRESETS, CLIPVisionTower, ImagePreprocessor
    from chronoedit.models.dit import DIT_PRESETS, ChronoEditDiT
    from chronoedit.models.text import UMT5_PRESETS, Tokenizer, UMT5Encoder
    from chronoedit.models.vae import VAE_PRESETS, WanVAE
    from chronoedit.sampling import SamplerConfig

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_cfg = UMT5_PRESETS["tiny"]
        clip_cfg = CLIP_PRESETS["tiny"]
        dit_cfg = DIT_PRESETS["tiny"].replace(text_dim=text_cfg.dim, image_dim=clip_cfg.dim)
        dit = ChronoEditDiT(dit_cfg).init_weights(torch.Generator().manual_seed(seed))
        vae = WanVAE(VAE_PRESETS["tiny"])
        text_encoder = UMT5Encoder(text_cfg)
        image_encoder = CLIPVisionTower(clip_cfg)
    tok_dir = files("chronoedit") / "assets" / "tiny_tokenizer"
    return Components(
        dit=dit.eval(),
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=Tokenizer.from_folder(str(tok_dir)),
        image_encoder=image_encoder.eval(),
        image_processor=ImagePreprocessor(
            size={"shortest_edge": clip_cfg.image_size},
            crop_size={"height": clip_cfg.image_size, "width": clip_cfg.image_size},
        ),
        default_sampler=SamplerConfig(steps=8, shift=5.0),
        source="built-in tiny demo model (random weights)",
        random_weights=True,
    )


def load_components(
    checkpoint: str, *, dtype: torch.dtype = torch.bfloat16, device: torch.device | str = "cpu"
) -> Components:
    """Every component of ``checkpoint``: ``"tiny"``, a diffusers-layout or native folder, or an ``org/name``
    Hub id (downloaded through the Hub cache, only the files needed). The DiT, UMT5 and the VAE load in
    ``dtype`` (fp32 islands kept), the CLIP tower in fp32, each directly onto ``device``."""
    if checkpoint == TINY:
        return tiny_components()
    from chronoedit.checkpoint.dit import load_dit
    from chronoedit.checkpoint.encoders import load_image_encoder, load_text_encoder
    from chronoedit.checkpoint.resolve import resolve_checkpoint
    from chronoedit.checkpoint.vae import load_vae
    from chronoedit.models.clip import ImagePreprocessor
    from chronoedit.models.text import Tokenizer
    from chronoedit.sampling import SamplerConfig

    info = resolve_checkpoint(checkpoint)
    defaults = info.sampler()
    distill = [p for p in info.loras if "distill" in p.name]
    return Components(
        dit=load_dit(info.dit, dtype=dtype, device=device),
        vae=load_vae(info.vae, dtype=dtype, device=device),
        text_encoder=load_text_encoder(info.text_encoder, dtype=dtype, device=device),
        tokenizer=Tokenizer.from_folder(info.tokenizer),
        image_encoder=load_image_encoder(info.image_encoder, dtype=torch.float32, device=device),
        image_processor=ImagePreprocessor.from_folder(info.image_processor),
        default_sampler=SamplerConfig(**defaults) if defaults else None,
        source=f"{checkpoint} ({info.kind} layout at {info.root})",
        extras={"distill_lora": str(distill[0])} if distill else {},
    )
