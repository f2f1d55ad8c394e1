"""The ChronoEdit DiT: a plain ``nn.Module`` over a :class:`DiTConfig`.

Input ``x (B, C_in, F, H, W)`` latent video (noisy latents ++ mask ++ condition), timesteps ``t (B,)`` in
[0, 1000], text ``context (B, Lt ≤ text_len, text_dim)`` and CLIP tokens ``clip_tokens (B, Li, image_dim)``;
output ``(B, C_out, F, H, W)``, the flow velocity. The text is zero-padded to ``text_len`` (512) positions,
attended without a mask as the weights were trained; ``context_lens (B,)`` marks rows past each prompt's
length as padding too (a batch of prompts of different lengths).
"""

from __future__ import annotations

import math
import re

import torch
from einops import rearrange
from torch import Tensor, nn

from chronoedit.models.dit.config import DiTConfig
from chronoedit.models.dit.layers import CachedContext, Head, ImageEmbedding, TextContext, build_block
from chronoedit.models.dit.rope import rope_3d, temporal_positions
from chronoedit.ops.attention import AttentionFn, sdpa_attention

# Parameters kept in fp32 when the model is cast to bf16/fp16: the time embedding, every modulation table
# and every norm weight (the fp32 islands; the maths around them runs in fp32 as well).
_FP32_PARAM = re.compile(r"(^|\.)(time_embedding|time_projection|modulation|norm\w*|img_emb\.proj\.[04])(\.|$)")


def sinusoidal_embedding(t: Tensor, dim: int) -> Tensor:
    """Timestep embedding, cos first: [cos(t·ω), sin(t·ω)] with ω_i = 10000^(−i/(dim/2)); (B,) -> (B, dim) fp32."""
    half = dim // 2
    omega = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * omega[None]  # (B, dim/2)
    return torch.cat([args.cos(), args.sin()], dim=-1)


def _identity(t: Tensor | None) -> tuple:
    """What a cached entry is valid for: the tensor's memory, layout and in-place version (None: nothing)."""
    if t is None:
        return (None,)
    version = None if t.is_inference() else t._version  # inference-mode tensors keep no version counter
    return (t.data_ptr(), tuple(t.shape), t.stride(), t.dtype, t.device, version)


class ContextCache:
    """Exact reuse across the steps of one edit, passed to :meth:`ChronoEditDiT.forward` by its caller (nothing
    is kept on the module): per (text, lengths, CLIP tokens) every block's cross-attention K/V — the context
    never changes during an edit, so both CFG branches are projected once, not once per step — and the RoPE
    table per token grid. An entry is keyed by the identity of its input tensors (memory, shape, strides,
    in-place version) and keeps them alive, so a new prompt, a new image or an in-place change rebuilds it.
    Drop the object with the edit."""

    def __init__(self) -> None:
        self._kv: dict[tuple, tuple[tuple, list[CachedContext]]] = {}
        self._rope: dict[tuple, Tensor] = {}
        self.builds = 0  # how many context entries were made (for tests and logs)

    def kv(self, dit: ChronoEditDiT, context: Tensor, clip: Tensor | None, lens: Tensor | None) -> list[CachedContext]:
        """One slot per block for this context (each block projects its K/V into it on first use)."""
        key = (_identity(context), _identity(clip), _identity(lens))
        if key not in self._kv:
            ctx, img = dit.embed_context(context, clip, lens)
            self._kv[key] = ((context, clip, lens), [CachedContext(ctx, img) for _ in dit.blocks])
            self.builds += 1
        return self._kv[key][1]

    def rope(self, dit: ChronoEditDiT, grid: tuple[int, int, int], device: torch.device) -> Tensor:
        key = (grid, device)
        if key not in self._rope:
            self._rope[key] = dit.rope(grid, device)
        return self._rope[key]


class ChronoEditDiT(nn.Module):
    """``attn_fn``: the attention kernel every block calls (runtime, not architecture: see
    :func:`chronoedit.parallelize.apply_attention`); ``cfg.block`` picks the block variant."""

    def __init__(self, cfg: DiTConfig, attn_fn: AttentionFn = sdpa_attention) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.patch_embedding = nn.Conv3d(cfg.in_channels, d, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, d), nn.GELU(approximate="tanh"), nn.Linear(d, d))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        self.img_emb = ImageEmbedding(cfg.image_dim, d) if cfg.image_dim is not None else None
        self.blocks = nn.ModuleList(build_block(cfg, attn_fn) for _ in range(cfg.num_layers))
        self.head = Head(d, cfg.out_channels * math.prod(cfg.patch_size), cfg.eps)

    # ------------------------------------------------------------------ precision
    @staticmethod
    def keep_fp32(name: str) -> bool:
        """Whether parameter ``name`` stays fp32 when the model is stored in a lower precision."""
        return _FP32_PARAM.search(name) is not None

    # ------------------------------------------------------------------ checks
    def check_inputs(
        self, x: Tensor, t: Tensor, context: Tensor, clip_tokens: Tensor | None, context_lens: Tensor | None = None
    ) -> None:
        """Raise a ValueError naming the offending shape and the limit, before any compute."""
        cfg = self.cfg
        if x.ndim != 5:
            raise ValueError(f"x must be (B, C, F, H, W), got shape {tuple(x.shape)}")
        b, c, f, h, w = x.shape
        if c != cfg.in_channels:
            raise ValueError(f"x has {c} channels, the model takes in_channels={cfg.in_channels}")
        for name, size, p in zip(("frames", "height", "width"), (f, h, w), cfg.patch_size):
            if size % p:
                raise ValueError(f"latent {name} {size} is not divisible by the patch size {p} (x {tuple(x.shape)})")
        gf, gh, gw = f // cfg.patch_size[0], h // cfg.patch_size[1], w // cfg.patch_size[2]
        max_t = max(temporal_positions(gf, cfg.rope_temporal_skip_len)) + 1
        for name, n in (("frame", max_t), ("row", gh), ("column", gw)):
            if n > cfg.rope_max_seq_len:
                raise ValueError(
                    f"{n} latent {name} positions exceed rope_max_seq_len={cfg.rope_max_seq_len} (x {tuple(x.shape)})"
                )
        if t.ndim > 1 or (t.ndim == 1 and t.shape[0] not in (1, b)):
            raise ValueError(f"timestep must be a scalar or (B={b},), got shape {tuple(t.shape)}")
        if context.ndim != 3 or context.shape[0] != b or context.shape[2] != cfg.text_dim:
            raise ValueError(f"context must be (B={b}, L, text_dim={cfg.text_dim}), got {tuple(context.shape)}")
        if context.shape[1] > cfg.text_len:
            raise ValueError(f"context has {context.shape[1]} tokens, more than text_len={cfg.text_len}")
        if context_lens is not None and (
            tuple(context_lens.shape) != (b,) or context_lens.min() < 0 or context_lens.max() > context.shape[1]
        ):
            raise ValueError(
                f"context_lens must be (B={b},) ints in [0, {context.shape[1]}], got {context_lens.tolist()}"
            )
        if cfg.image_dim is None:
            if clip_tokens is not None:
                raise ValueError("clip_tokens given but the model has no image cross-attention (image_dim=None)")
        elif clip_tokens is None:
            raise ValueError(f"the model needs clip_tokens (B={b}, L, image_dim={cfg.image_dim})")
        elif clip_tokens.ndim != 3 or clip_tokens.shape[0] != b or clip_tokens.shape[2] != cfg.image_dim:
            raise ValueError(
                f"clip_tokens must be (B={b}, L, image_dim={cfg.image_dim}), got {tuple(clip_tokens.shape)}"
            )

    # ------------------------------------------------------------------ forward
    def embed_time(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """Timesteps (B,) -> time embedding e (B, D) and block modulation input e0 (B, 6, D), both fp32."""
        dtype = self.time_embedding[0].weight.dtype
        e = self.time_embedding(sinusoidal_embedding(t, self.cfg.freq_dim).to(dtype)).float()
        e0 = self.time_projection(e.to(dtype)).float().unflatten(1, (6, self.cfg.dim))
        return e, e0

    def embed_context(
        self, context: Tensor, clip_tokens: Tensor | None, context_lens: Tensor | None = None
    ) -> tuple[TextContext, Tensor | None]:
        """Text (B, Lt, text_dim) -> its embedded real rows + the padding row; CLIP tokens -> model width."""
        dtype = self.text_embedding[0].weight.dtype
        lens = (context.shape[1],) * context.shape[0] if context_lens is None else tuple(context_lens.tolist())
        longest = max(lens)
        tokens = self.text_embedding(context[:, :longest].to(dtype))  # (B, Lr, D)
        pad = None
        if min(lens) < self.cfg.text_len:  # zero padding to text_len, as trained: one row embeds them all
            pad = self.text_embedding(context.new_zeros(1, 1, context.shape[2], dtype=dtype))  # (1, 1, D)
        text = TextContext(tokens, pad, lens, self.cfg.text_len)
        img = None if self.img_emb is None else self.img_emb(clip_tokens.to(self.img_emb.proj[1].weight.dtype))
        return text, img

    def token_grid(self, x: Tensor) -> tuple[int, int, int]:
        """The (frames, height, width) token grid of a latent video ``x (B, C, F, H, W)``."""
        (pt, ph, pw), (_, _, f, h, w) = self.cfg.patch_size, x.shape
        return f // pt, h // ph, w // pw

    def rope(self, grid: tuple[int, int, int], device: torch.device | str) -> Tensor:
        """RoPE rotations (L, Dh/2) of every token of ``grid``, in (f, h, w) token order."""
        cfg = self.cfg
        return rope_3d(grid, cfg.rope_axes_dims, cfg.rope_theta, cfg.rope_temporal_skip_len, device)

    def embed_tokens(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Video tokens (B, L, D), time embedding e (B, D) and modulation input e0 (B, 6, D)."""
        x = self.patch_embedding(x.to(self.patch_embedding.weight.dtype))  # (B, D, f, h, w)
        x = rearrange(x, "b d f h w -> b (f h w) d")
        e, e0 = self.embed_time(t.reshape(-1).expand(x.shape[0]))
        return x, e, e0

    def embed(
        self, x: Tensor, t: Tensor, context: Tensor, clip_tokens: Tensor | None, context_lens: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor, TextContext, Tensor | None]:
        """Stage 1: video tokens (B, L, D), time embedding e (B, D), modulation input e0 (B, 6, D), the embedded
        text and CLIP tokens."""
        return *self.embed_tokens(x, t), *self.embed_context(context, clip_tokens, context_lens)

    def run_blocks(
        self, x: Tensor, e0: Tensor, ctx: TextContext | list[CachedContext], img: Tensor | None, rope: Tensor
    ) -> Tensor:
        """Stage 2: every block on tokens x (B, L, D) with their RoPE rows (L, Dh/2) -> (B, L, D). ``ctx``: the
        embedded text (with ``img``), or each block's :class:`CachedContext` slot of a ``ContextCache``."""
        per_block = isinstance(ctx, list)
        for i, block in enumerate(self.blocks):
            x = block(x, e0, ctx[i], None, rope) if per_block else block(x, e0, ctx, img, rope)
        return x

    def unpatchify(self, x: Tensor, grid: tuple[int, int, int]) -> Tensor:
        """Stage 3b: head outputs (B, L, pt·ph·pw·C_out) of the whole ``grid`` -> (B, C_out, F, H, W)."""
        pt, ph, pw = self.cfg.patch_size
        f, h, w = grid
        return rearrange(x, "b (f h w) (pt ph pw c) -> b c (f pt) (h ph) (w pw)", f=f, h=h, w=w, pt=pt, ph=ph, pw=pw)

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        context: Tensor,
        clip_tokens: Tensor | None = None,
        context_lens: Tensor | None = None,
        cache: ContextCache | None = None,
    ) -> Tensor:
        """embed → blocks → head (stage 3a, per token) → unpatchify; a sequence-parallel wrapper
        (:mod:`chronoedit.parallel`) runs the same stages on a shard of the tokens. ``cache``: reuse the
        context's K/V and the RoPE table across calls (inference; the same numbers)."""
        self.check_inputs(x, t, context, clip_tokens, context_lens)
        grid = self.token_grid(x)
        if cache is None:
            tokens, e, e0, ctx, img = self.embed(x, t, context, clip_tokens, context_lens)
            rope = self.rope(grid, x.device)
        else:
            (tokens, e, e0), img = self.embed_tokens(x, t), None
            ctx, rope = cache.kv(self, context, clip_tokens, context_lens), cache.rope(self, grid, x.device)
        tokens = self.run_blocks(tokens, e0, ctx, img, rope)
        return self.unpatchify(self.head(tokens, e), grid)  # head: (B, L, pt·ph·pw·C_out)

    # ------------------------------------------------------------------ init
    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None) -> ChronoEditDiT:
        """Initialise every parameter (for models built on ``meta`` then ``to_empty``; also the tiny demo).

        Linear/conv: Xavier-uniform weights, zero biases; norms: ones/zeros; modulation tables: N(0, 1/D).
        The output head is left non-zero so that random models give informative parity tests.
        """
        for name, p in self.named_parameters():
            if name.endswith("modulation"):
                p.copy_(torch.randn(p.shape, generator=generator) / self.cfg.dim**0.5)
            elif p.ndim >= 2:
                fan_out, fan_in = p.shape[0], math.prod(p.shape[1:])
                bound = math.sqrt(6.0 / (fan_in + fan_out))
                p.copy_(torch.rand(p.shape, generator=generator) * 2 * bound - bound)
            elif "norm" in name and name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.zero_()
        return self
