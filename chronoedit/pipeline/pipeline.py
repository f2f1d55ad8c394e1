"""The edit: image + instruction -> edited image (and, with temporal reasoning, the video that leads there).

Stages: text (UMT5) → image (CLIP) → VAE encode of [image, zeros…] → denoise (DiT + CFG + any solver,
dropping the reasoning frames after ``reasoning_steps``) → VAE decode. Shapes: B = 1 edit, T latent frames,
h × w = H/8 × W/8 latent size.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from torch import Tensor, nn
from tqdm.auto import tqdm

from chronoedit.models.dit import ContextCache
from chronoedit.models.precision import cast_model
from chronoedit.models.vae import VAETiling
from chronoedit.pipeline.components import Components
from chronoedit.pipeline.condition import build_condition, check_num_frames, first_frame_video
from chronoedit.pipeline.images import image_to_tensor, to_rgb, unit_to_images, video_to_unit
from chronoedit.pipeline.profiling import Profiler
from chronoedit.pipeline.resolution import DEFAULT_MAX_AREA, resolve_size
from chronoedit.sampling import (
    FrameDrop,
    SamplerConfig,
    VelocityFn,
    build_solver,
    classifier_free_guidance,
    classifier_free_guidance_batched,
    flow_schedule,
    sample,
)
from chronoedit.sampling.step_cache import (
    Calibrator,
    MagCacheSettings,
    NoStepCache,
    StepCache,
    StepCacheStats,
    guided_with,
)

PLAIN_FRAMES = 5  # plain editing: the input and the edit, 2 latent frames

DEFAULT_NEGATIVE_PROMPT = ""  # the release scripts leave it empty ("not recommended")


@dataclass
class EditRequest:
    image: Image.Image
    prompt: str
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    seed: int = 42
    guidance_scale: float = 5.0  # classifier-free guidance when > 1
    reasoning_steps: int = 0  # k: 0 plain 5-frame edit; k > 0 denoise num_frames for k steps, then keep 2
    num_frames: int = 29  # video frames while reasoning (29 -> 8 latent frames)
    height: int | None = None  # both or neither; multiples of 16
    width: int | None = None
    max_area: int = DEFAULT_MAX_AREA

    def validate(self) -> None:
        """ValueErrors for settings that cannot run, before anything is computed."""
        if not isinstance(self.prompt, str):
            raise ValueError(f"prompt must be a string, got {type(self.prompt).__name__}")
        if self.reasoning_steps < 0:
            raise ValueError(f"reasoning.steps={self.reasoning_steps} must be >= 0 (0 = no temporal reasoning)")
        check_num_frames(self.num_frames)
        if self.guidance_scale < 0:
            raise ValueError(f"guidance_scale={self.guidance_scale} must be >= 0")
        resolve_size(self.image.size, self.height, self.width, self.max_area)

    @property
    def video_frames(self) -> int:
        return self.num_frames if self.reasoning_steps > 0 else PLAIN_FRAMES


@dataclass
class Text:
    """Encoded prompt and negative prompt: (1, 512, text_dim) zero-padded states and (1,) token counts."""

    context: Tensor
    lens: Tensor
    negative: Tensor | None  # None without classifier-free guidance
    negative_lens: Tensor | None


@dataclass
class EditResult:
    image: Image.Image  # the edit: the last frame
    frames: list[Image.Image]  # every decoded frame (5, or 29 for an undropped reasoning video)
    video: Tensor  # the same frames before 8-bit rounding: (F, 3, H, W) float32 in [0, 1], CPU
    latents: Tensor  # final latents before decoding, normalised, (B, 16, T, h, w) fp32 on CPU
    height: int
    width: int
    dropped_at: int | None  # step at which the reasoning frames were dropped (None: never)
    profile: Profiler
    step_cache: StepCacheStats | None = None  # DiT calls made and skipped (runtime.step_cache)

    @property
    def is_reasoning_video(self) -> bool:
        return len(self.frames) > PLAIN_FRAMES


class EditPipeline:
    """Runs :class:`EditRequest` s on loaded :class:`Components`.

    ``dtype`` is the storage/compute dtype of the DiT, UMT5 and the VAE (bf16 on GPU, as the release scripts);
    the CLIP tower runs in fp32 (as they do). With ``offload`` every module lives on the CPU and visits
    ``device`` only for its stage. ``cfg_batched`` runs the conditional and unconditional DiT passes as one
    doubled batch. ``tiling``: how the VAE runs (tiles / strips; default untiled). ``context_cache``: exact reuse
    of the context's K/V and the RoPE table across steps (same numbers; off: recompute them at every call).
    ``step_cache``: skip DiT forwards by reusing the block stack's residual (:mod:`chronoedit.sampling.step_cache`:
    approximate; None = :class:`~chronoedit.sampling.step_cache.NoStepCache`, every forward computed, today's
    numbers).
    """

    def __init__(
        self,
        components: Components,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        offload: bool = False,
        cfg_batched: bool = False,
        tiling: VAETiling | None = None,
        context_cache: bool = True,
        step_cache: NoStepCache | MagCacheSettings | Calibrator | None = None,
        progress: bool = True,
    ) -> None:
        self.c = components
        self.device = torch.device(device)
        self.dtype = dtype
        self.offload, self.cfg_batched, self.progress = offload, cfg_batched, progress
        self.tiling, self.context_cache, self.step_cache = tiling, context_cache, step_cache
        home = torch.device("cpu") if offload else self.device
        for module, dt in self._modules():
            cast_model(module.to(device=home).eval(), dt)

    def _modules(self) -> list[tuple[nn.Module, torch.dtype | None]]:
        c = self.c
        return [
            (c.text_encoder, self.dtype),
            (c.image_encoder, torch.float32),
            (c.vae, self.dtype),
            (c.dit, self.dtype),
        ]

    @contextlib.contextmanager
    def _on_device(self, module: nn.Module) -> Iterator[nn.Module]:
        if not self.offload:
            yield module
            return
        module.to(self.device)
        try:
            yield module
        finally:
            module.to("cpu")
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    # ------------------------------------------------------------------ stages
    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        """Prompts -> (B, text_len, text_dim) UMT5 states of the real tokens, zeros after (text_len: the DiT's, 512
        for the released model); and each prompt's length."""
        from chronoedit.models.text import clean_prompt, encode_prompts

        n = self.c.dit.cfg.text_len
        _, mask = self.c.tokenizer([clean_prompt(p) for p in prompts], max_length=n)
        with self._on_device(self.c.text_encoder) as enc:
            return encode_prompts(enc, self.c.tokenizer, prompts, max_length=n).to(self.device, self.dtype), mask.sum(1)

    @torch.no_grad()
    def encode_image(self, image: Image.Image) -> Tensor:
        """The input image -> CLIP penultimate-layer tokens (1, 257, image_dim)."""
        pixels = self.c.image_processor([image])
        with self._on_device(self.c.image_encoder) as tower:
            return tower(pixels.to(self.device, _dtype_of(tower))).to(self.dtype)

    @torch.no_grad()
    def encode_condition(self, image: Image.Image, height: int, width: int, num_frames: int) -> Tensor:
        """Condition (1, 20, T, h, w): first-frame mask ++ normalised latents of [image, zeros × (F−1)]."""
        video = first_frame_video(image_to_tensor(image, height, width), num_frames)  # (1, 3, F, H, W)
        return build_condition(self.encode_video(video), num_frames)

    @torch.no_grad()
    def encode_video(self, video: Tensor) -> Tensor:
        """Video (B, 3, F, H, W) in [−1, 1] -> normalised latents (B, 16, T, h, w), float32."""
        with self._on_device(self.c.vae) as vae:
            return vae.encode(video.to(self.device, _dtype_of(vae)), tiling=self.tiling).float()

    @torch.no_grad()
    def decode(self, latents: Tensor, reasoning: bool, keep: Sequence[int] = FrameDrop.keep) -> Tensor:
        """Normalised latents -> video (B, 3, F, H, W) in [−1, 1], as the reference decodes.

        With more than 2 latent frames left (reasoning, never dropped): decode(latents[:, :, :−1]) followed by
        decode(latents[:, :, keep])[:, :, 1:] (keep = [0, −1]), so the last 4 frames are the edit as a plain
        edit decodes it.
        """
        with self._on_device(self.c.vae) as vae:
            z = latents.to(self.device, _dtype_of(vae))
            if reasoning and z.shape[2] > len(keep):
                reason = vae.decode(z[:, :, :-1], tiling=self.tiling)
                edit = vae.decode(z[:, :, list(keep)], tiling=self.tiling)
                return torch.cat([reason, edit[:, :, 1:]], dim=2)
            return vae.decode(z, tiling=self.tiling)

    def velocity(
        self,
        condition: Tensor,
        keep: Sequence[int],
        text: Text,
        clip: Tensor,
        scale: float,
        step_cache: StepCache | None = None,
    ) -> VelocityFn:
        """The guided velocity v(x, t) (B, 16, T, h, w): the DiT on [x, condition] with the guidance of
        :mod:`chronoedit.sampling.guidance` (none at ``scale ≤ 1``). After the reasoning drop x has fewer frames
        than ``condition``: its frames ``keep`` are used.

        Exact reuse for the edit (``context_cache``): every block's cross-attention K/V of each prompt (both CFG
        branches) and the RoPE table are computed once (:class:`~chronoedit.models.dit.ContextCache`, dropped
        with this closure), and the DiT input [x, condition] is one buffer per shape whose condition half is
        written once.

        ``step_cache`` (approximate, opt-in): told once per evaluation, before the CFG branches, whether this step
        reuses the cached residual; the one decision holds for both branches (each reuses its own residual)."""
        dit, kept = self.c.dit, condition[:, :, list(keep)]
        cache = ContextCache() if self.context_cache else None
        inputs: dict[tuple[int, ...], Tensor] = {}  # (B, 16 + 20, T, h, w) per shape, condition part filled

        def model(x: Tensor, t: Tensor, context: Tensor, lens: Tensor, branch: str = "cond") -> Tensor:
            b, c = x.shape[0], x.shape[1]
            inp = inputs.get(tuple(x.shape))
            if inp is None:
                cond = condition if condition.shape[2] == x.shape[2] else kept
                inp = torch.cat([x, cond.expand(b, -1, -1, -1, -1)], dim=1).to(self.dtype)
                inputs[tuple(x.shape)] = inp
            else:
                inp[:, :c].copy_(x)  # the same cast as .to(dtype) of the concatenation
            if step_cache is not None:
                out = step_cache.forward(dit, branch, inp, t.expand(b), context, clip.expand(b, -1, -1), lens, cache)
                return out.float()
            return dit(inp, t.expand(b), context, clip.expand(b, -1, -1), lens, cache=cache).float()

        positive = {"context": text.context, "lens": text.lens}
        if text.negative is None or scale <= 1.0:
            guided = lambda x, t: model(x, t, **positive)  # noqa: E731
        elif self.cfg_batched:
            negative = {"context": text.negative, "lens": text.negative_lens}
            batched = lambda x, t, **kw: model(x, t, **kw, branch="batched")  # noqa: E731
            guided = classifier_free_guidance_batched(batched, positive, negative, scale)
        else:
            negative = {"context": text.negative, "lens": text.negative_lens}
            guided = classifier_free_guidance(
                lambda x, t: model(x, t, **positive), lambda x, t: model(x, t, **negative, branch="uncond"), scale
            )
        return guided if step_cache is None else guided_with(step_cache, guided)

    # ------------------------------------------------------------------ the edit
    def __call__(
        self,
        request: EditRequest,
        sampler: SamplerConfig | None = None,
        latents: Tensor | None = None,
    ) -> EditResult:
        """Edit one image. ``latents`` overrides the seeded initial noise (B, 16, T, h, w)."""
        request.validate()
        sampler = sampler or self.c.default_sampler or SamplerConfig()
        image = to_rgb(request.image)
        height, width = resolve_size(image.size, request.height, request.width, request.max_area)
        if image.size != (width, height):  # once, before both encoders, as the release scripts do
            image = image.resize((width, height), resample=Image.Resampling.BICUBIC)
        frames, k = request.video_frames, request.reasoning_steps
        t_latent = check_num_frames(frames)
        solver, sched = build_solver(sampler), flow_schedule(sampler.steps, sampler.shift, sampler.num_train_timesteps)
        drop = FrameDrop(step=k) if k > 0 else None  # k ≥ steps: never dropped
        cfg = request.guidance_scale > 1.0
        prof = Profiler(self.device)

        with prof.stage("text"):
            prompts = [request.prompt] + ([request.negative_prompt] if cfg else [])
            emb, lens = self.encode_text(prompts)
            text = Text(emb[:1], lens[:1], emb[1:] if cfg else None, lens[1:] if cfg else None)
        with prof.stage("image"):
            clip = self.encode_image(image)
        with prof.stage("vae_encode"):
            condition = self.encode_condition(image, height, width, frames).to(self.device)
        s = self.c.vae.cfg.spatial_factor
        shape = (1, self.c.vae.cfg.z_dim, t_latent, height // s, width // s)
        if latents is None:  # drawn exactly as diffusers draws it: CPU generator, float32, one randn
            latents = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(request.seed))
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents have shape {tuple(latents.shape)}, this edit needs {shape}")
        x = latents.to(self.device, torch.float32)

        keep = FrameDrop.keep if drop is None else drop.keep
        dropped_at = k if drop is not None and k < len(sched) and t_latent > len(keep) else None
        step_cache = (self.step_cache or NoStepCache()).start(len(sched), sampler.name)  # this edit's; counts calls
        model = self.velocity(condition, keep, text, clip, request.guidance_scale, step_cache)
        with prof.stage("denoise"), self._on_device(self.c.dit), torch.no_grad():
            bar = tqdm(total=len(sched), desc="denoise", disable=not self.progress, leave=False)
            with bar:
                x = sample(model, x, sched, solver, drop=drop, before_step=_advance(bar))
        with prof.stage("vae_decode"):
            video = video_to_unit(self.decode(x, reasoning=k > 0, keep=keep))[0].transpose(0, 1).cpu()  # (F, 3, H, W)
        pil = unit_to_images(video)
        return EditResult(pil[-1], pil, video, x.float().cpu(), height, width, dropped_at, prof, step_cache.stats)


def _dtype_of(module: nn.Module) -> torch.dtype:
    for p in module.parameters():
        if p.is_floating_point() and p.dtype != torch.float32:
            return p.dtype
    return torch.float32


def _advance(bar: tqdm) -> Callable:
    """A ``before_step`` hook that only moves the progress bar."""

    def hook(i: int, x: Tensor, state):
        bar.update()
        return x, state

    return hook
