"""The loaded models of an edit, and where they come from: a checkpoint, or seeded random weights of a
:class:`~chronoedit.models.spec.ModelSpec` (the tiny demo, or any architecture for timing and debugging)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from chronoedit.checkpoint.architecture import resolve_init
from chronoedit.models.spec import MODEL_PRESETS, ModelSpec

if TYPE_CHECKING:
    from chronoedit.models.clip import CLIPVisionTower, ImagePreprocessor
    from chronoedit.models.dit import ChronoEditDiT
    from chronoedit.models.text import Tokenizer, UMT5Encoder
    from chronoedit.models.vae import WanVAE
    from chronoedit.sampling import SamplerConfig

RANDOM_SAMPLER = {"steps": 8, "shift": 5.0}  # sampler defaults of a model without a scheduler config


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
    spec: ModelSpec | None = None  # the architecture that was built


def builtin_tokenizer() -> Tokenizer:
    """The small sentencepiece tokenizer shipped in ``chronoedit/assets/tiny_tokenizer`` (1024 pieces)."""
    from chronoedit.models.text import Tokenizer

    return Tokenizer.from_folder(str(files("chronoedit") / "assets" / "tiny_tokenizer"))


@torch.no_grad()
def random_components(spec: ModelSpec | None = None, seed: int = 0) -> Components:
    """Every component of ``spec`` (default: the tiny preset) with seeded random weights, and the built-in
    tokenizer. The tiny demo runs on a CPU in seconds."""
    from chronoedit.models.clip import CLIPVisionTower, ImagePreprocessor
    from chronoedit.models.dit import ChronoEditDiT
    from chronoedit.models.text import UMT5Encoder
    from chronoedit.models.vae import WanVAE
    from chronoedit.sampling import SamplerConfig

    spec = spec or MODEL_PRESETS["tiny"]
    tokenizer = builtin_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        dit = ChronoEditDiT(spec.dit).init_weights(torch.Generator().manual_seed(seed))
        vae = WanVAE(spec.vae)
        text_encoder = UMT5Encoder(spec.text_encoder)
        image_encoder = CLIPVisionTower(spec.image_encoder)
    size = spec.image_encoder.image_size
    return Components(
        dit=dit.eval(),
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        image_encoder=image_encoder.eval(),
        image_processor=ImagePreprocessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}),
        default_sampler=SamplerConfig(**RANDOM_SAMPLER),
        source="built-in tiny demo model (random weights)" if spec == MODEL_PRESETS["tiny"] else "random weights",
        random_weights=True,
        spec=spec,
    )


def save_image_processor(components: Components, folder: Path) -> Path:
    """``folder/image_processor/preprocessor_config.json`` of ``components`` (for a checkpoint that ships it)."""
    out = folder / "image_processor"
    out.mkdir(parents=True, exist_ok=True)
    (out / "preprocessor_config.json").write_text(json.dumps(dataclasses.asdict(components.image_processor), indent=2))
    return out


def _tokenizer(info) -> Tokenizer:
    from chronoedit.checkpoint.encoders import embedded_tokenizer
    from chronoedit.models.text import Tokenizer

    if info.tokenizer is not None:
        return Tokenizer.from_folder(info.tokenizer)
    where = info.embedded_tokenizer
    return Tokenizer.from_sentencepiece(embedded_tokenizer(where), what=f"{where} (embedded tokenizer)")


def _image_processor(info, clip_config) -> ImagePreprocessor:
    from chronoedit.checkpoint.loose import released_image_processor
    from chronoedit.models.clip import ImagePreprocessor

    if info.image_processor is not None:
        return ImagePreprocessor.from_folder(info.image_processor)
    return ImagePreprocessor.from_config(released_image_processor(clip_config.image_size))


def tiny_components(seed: int = 0) -> Components:
    """The tiny demo model: :func:`random_components` of the tiny preset."""
    return random_components(MODEL_PRESETS["tiny"], seed)


def load_components(
    checkpoint: str,
    *,
    dtype: torch.dtype = torch.bfloat16,
    device: torch.device | str = "cpu",
    model: ModelSpec | None = None,
    init: str = "auto",
    overrides: Mapping[str, Any] | None = None,
    seed: int = 0,
    files: Mapping[str, str] | None = None,
) -> Components:
    """Every component of an edit. ``init`` (see :mod:`chronoedit.checkpoint.architecture`): ``random`` builds
    ``model`` with weights from ``seed``; ``checkpoint`` loads ``checkpoint`` (a diffusers-layout or native folder,
    a folder of loose files recognised by their keys, or an ``org/name`` Hub id) with the ``model.*``
    ``overrides`` applied, strictly; ``auto`` picks. ``files`` (``components.*``: component or ``tokenizer`` /
    ``image_processor`` -> path) replace the checkpoint's parts; what a loose set does not ship comes from the
    released model's built-in defaults (named in ``source``). The DiT, UMT5 and the VAE load in ``dtype`` (fp32
    islands kept), the CLIP tower in fp32, each directly on ``device``."""
    files = {k: v for k, v in (files or {}).items() if v}
    if resolve_init(checkpoint, init, files) == "random":
        return random_components(model, seed)
    from chronoedit.checkpoint.architecture import NO_CHECKPOINT, open_model
    from chronoedit.checkpoint.registry import load
    from chronoedit.sampling import SamplerConfig

    if checkpoint == NO_CHECKPOINT:
        checkpoint = ""  # components.* name every component
    sources, info = open_model(checkpoint, overrides, files=files)  # every override checked before any read
    dtypes = {"image_encoder": torch.float32}
    models = {name: load(src, dtype=dtypes.get(name, dtype), device=device) for name, src in sources.items()}
    defaults = info.sampler()
    distill = [p for p in info.loras if "distill" in p.name]
    where = f"{info.kind} layout at {info.root}" if info.kind != "files" else "per-component files"
    if info.defaults:
        where += "; built-in defaults of the released model: " + ", ".join(info.defaults)
    if info.embedded_tokenizer is not None:
        where += f"; tokenizer embedded in {info.embedded_tokenizer.name}"
    return Components(
        **models,
        tokenizer=_tokenizer(info),
        image_processor=_image_processor(info, sources["image_encoder"].config),
        default_sampler=SamplerConfig(**defaults) if defaults else None,
        source=f"{info.source or checkpoint} ({where})",
        extras={"distill_lora": str(distill[0])} if distill else {},
        spec=ModelSpec(**{name: src.config for name, src in sources.items()}),
    )
