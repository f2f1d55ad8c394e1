"""Building blocks of the DiT: norms, attention, the transformer block and the output head.

Shapes: B batch, L video tokens, Lt text tokens, Li image tokens, D model width, H heads, Dh head dim.
Parameter names are the original Wan 2.1 names (also used by ComfyUI and the original repo).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import torch
from einops import rearrange
from torch import Tensor, nn

from chronoedit.models.norms import LayerNorm, RMSNorm
from chronoedit.ops.attention import AttentionFn
from chronoedit.ops.norm import gated_residual, modulate
from chronoedit.ops.rope import apply_rope

if TYPE_CHECKING:
    from chronoedit.models.dit.config import DiTConfig


def _qk_norm(dim: int, eps: float, enabled: bool) -> nn.Module:
    return RMSNorm(dim, eps) if enabled else nn.Identity()


class SelfAttention(nn.Module):
    """Multi-head self-attention with RMSNorm on q and k across all heads, then 3D RoPE."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool, eps: float, attn_fn: AttentionFn) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.attn_fn = attn_fn
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q, self.norm_k = _qk_norm(dim, eps, qk_norm), _qk_norm(dim, eps, qk_norm)

    def forward(self, x: Tensor, rope: Tensor) -> Tensor:
        """x (B, L, D), rope (L, Dh/2) complex rotations -> (B, L, D)."""
        q = rearrange(self.norm_q(self.q(x)), "b l (h d) -> b l h d", h=self.num_heads)
        k = rearrange(self.norm_k(self.k(x)), "b l (h d) -> b l h d", h=self.num_heads)
        v = rearrange(self.v(x), "b l (h d) -> b l h d", h=self.num_heads)
        out = self.attn_fn(apply_rope(q, rope), apply_rope(k, rope), v)  # (B, L, H, Dh)
        return self.o(out.flatten(2))


class TextContext(NamedTuple):
    """Embedded text for cross-attention: the real rows, and the one row every zero-padding position embeds to.

    Attention runs over all ``total`` (512) positions as trained: padding keys/values are computed once from
    ``pad`` and expanded into the positions after ``lens[b]`` — the same numbers as projecting each padding
    row, without projecting hundreds of identical rows per block.
    """

    tokens: Tensor  # (B, Lr, D) embedded rows; row j of item b is real when j < lens[b]
    pad: Tensor | None  # (1, 1, D) the embedding of a zero row; None when tokens already hold all positions
    lens: tuple[int, ...]  # real rows per item
    total: int  # positions attended to (text_len)

    def fill(self, real: Tensor, pad: Tensor | None) -> Tensor:
        """Per-row projections of ``tokens`` (B, Lr, C) and of ``pad`` (1, 1, C) -> (B, total, C)."""
        if pad is None:
            return real
        b, lr, c = real.shape
        if all(n == lr for n in self.lens):
            return torch.cat([real, pad.expand(b, self.total - lr, c)], dim=1)
        out = pad.expand(b, self.total, c).clone()
        for i, n in enumerate(self.lens):
            out[i, :n] = real[i, :n]
        return out


class CrossKV(NamedTuple):
    """One block's cross-attention keys and values, projected once per edit (see ``model.ContextCache``)."""

    k: Tensor  # (B, Lt, H, Dh) text keys, normed
    v: Tensor  # (B, Lt, H, Dh)
    k_img: Tensor | None  # (B, Li, H, Dh) image keys, normed; None without image cross-attention
    v_img: Tensor | None


class CachedContext:
    """One block's slot in a ``model.ContextCache``: the embedded context, and its :class:`CrossKV` once the
    block's cross-attention has projected it (inside the block's forward, where FSDP has gathered its weights)."""

    def __init__(self, text: TextContext, image: Tensor | None) -> None:
        self.text, self.image = text, image
        self.kv: CrossKV | None = None


class CrossAttention(nn.Module):
    """Attention from video tokens to the text tokens and, through separate k/v, to the image tokens.

    The two attention results (each its own softmax) are summed before the output projection. The context
    argument is the embedded text (projected here at every call) or a :class:`CachedContext` (projected once).
    """

    def __init__(self, dim: int, num_heads: int, qk_norm: bool, eps: float, attn_fn: AttentionFn, image: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.attn_fn = attn_fn
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q, self.norm_k = _qk_norm(dim, eps, qk_norm), _qk_norm(dim, eps, qk_norm)
        self.has_image = image
        if image:
            self.k_img, self.v_img = nn.Linear(dim, dim), nn.Linear(dim, dim)
            self.norm_k_img = _qk_norm(dim, eps, qk_norm)

    def project(self, text: TextContext, image: Tensor | None) -> CrossKV:
        """The keys and values of the embedded text (B, Lt, D) and image tokens (B, Li, D)."""
        heads = "b l (h d) -> b l h d"
        pad = text.pad
        k = text.fill(self.norm_k(self.k(text.tokens)), None if pad is None else self.norm_k(self.k(pad)))
        v = text.fill(self.v(text.tokens), None if pad is None else self.v(pad))
        k, v = rearrange(k, heads, h=self.num_heads), rearrange(v, heads, h=self.num_heads)  # (B, Lt, H, Dh)
        if not self.has_image:
            return CrossKV(k, v, None, None)
        k_img = rearrange(self.norm_k_img(self.k_img(image)), heads, h=self.num_heads)
        return CrossKV(k, v, k_img, rearrange(self.v_img(image), heads, h=self.num_heads))

    def forward(self, x: Tensor, text: TextContext | CachedContext, image: Tensor | None) -> Tensor:
        """x (B, L, D), text (B, Lt, D) embedded rows (or a cache slot), image (B, Li, D) or None -> (B, L, D)."""
        q = rearrange(self.norm_q(self.q(x)), "b l (h d) -> b l h d", h=self.num_heads)
        if isinstance(text, CachedContext):
            if text.kv is None:
                text.kv = self.project(text.text, text.image)
            kv = text.kv
        else:
            kv = self.project(text, image)
        out = self.attn_fn(q, kv.k, kv.v)  # (B, L, H, Dh)
        if self.has_image:
            out = out + self.attn_fn(q, kv.k_img, kv.v_img)
        return self.o(out.flatten(2))


class Modulation(NamedTuple):
    """The six adaLN vectors of a block, each (B, 1, D) in fp32 (order as stored in ``modulation``)."""

    shift: Tensor
    scale: Tensor
    gate: Tensor
    ffn_shift: Tensor
    ffn_scale: Tensor
    ffn_gate: Tensor


class DiTBlock(nn.Module):
    """adaLN(self-attn) → cross-attn → adaLN(FFN), residual stream in the weights' dtype.

    Modulation, norms and gated residual additions are computed in fp32.
    """

    def __init__(
        self,
        dim: int,
        ffn_dim: int,
        num_heads: int,
        *,
        qk_norm: bool,
        cross_attn_norm: bool,
        eps: float,
        image: bool,
        attn_fn: AttentionFn,
    ) -> None:
        super().__init__()
        self.norm1 = LayerNorm(dim, eps, elementwise_affine=False)
        self.self_attn = SelfAttention(dim, num_heads, qk_norm, eps, attn_fn)
        self.norm3 = LayerNorm(dim, eps, elementwise_affine=True) if cross_attn_norm else nn.Identity()
        self.cross_attn = CrossAttention(dim, num_heads, qk_norm, eps, attn_fn, image)
        self.norm2 = LayerNorm(dim, eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(self, x: Tensor, e: Tensor, context: TextContext, image: Tensor | None, rope: Tensor) -> Tensor:
        """x (B, L, D), e (B, 6, D) fp32, context (B, Lt, D), image (B, Li, D), rope (L, Dh/2) -> (B, L, D)."""
        m = Modulation(*(self.modulation.float() + e).unsqueeze(2).unbind(1))  # each (B, 1, D)
        y = self.self_attn(modulate(self.norm1(x), m.shift, m.scale).to(x.dtype), rope)
        x = gated_residual(x, y, m.gate)
        x = x + self.cross_attn(self.norm3(x), context, image)
        y = self.ffn(modulate(self.norm2(x), m.ffn_shift, m.ffn_scale).to(x.dtype))
        return gated_residual(x, y, m.ffn_gate)


class Head(nn.Module):
    """Output LayerNorm, 2-vector modulation (shift, scale) and the linear projection to patch pixels."""

    def __init__(self, dim: int, out_dim: int, eps: float) -> None:
        super().__init__()
        self.norm = LayerNorm(dim, eps, elementwise_affine=False)
        self.head = nn.Linear(dim, out_dim)
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)

    def forward(self, x: Tensor, e: Tensor) -> Tensor:
        """x (B, L, D), e (B, D) fp32 time embedding -> (B, L, out_dim)."""
        shift, scale = (self.modulation.float() + e[:, None]).unsqueeze(2).unbind(1)  # each (B, 1, D)
        return self.head(modulate(self.norm(x), shift, scale).to(x.dtype))


class ImageEmbedding(nn.Module):
    """CLIP tokens -> model width: LayerNorm → Linear → GELU → Linear → LayerNorm (fp32 norms, eps 1e-5)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(
            LayerNorm(in_dim),
            nn.Linear(in_dim, in_dim),
            nn.GELU(),
            nn.Linear(in_dim, out_dim),
            LayerNorm(out_dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


# ---------------------------------------------------------------------------------------------- block variants
# A block variant is a callable ``(cfg: DiTConfig, attn_fn) -> nn.Module`` whose module maps
# ``(x (B, L, D), e (B, 6, D) fp32, context: TextContext, image (B, Li, D) | None, rope (L, Dh/2)) -> (B, L, D)``;
# ``model.dit.block=<name>`` selects it. Register a new one from any file with ``@register_block("name")``.
BlockFactory = Callable[["DiTConfig", AttentionFn], nn.Module]
DIT_BLOCKS: dict[str, BlockFactory] = {}


def register_block(name: str) -> Callable[[BlockFactory], BlockFactory]:
    """Decorator: make a block class (constructed as ``cls(cfg, attn_fn)``) or factory selectable by name."""

    def add(factory: BlockFactory) -> BlockFactory:
        if name in DIT_BLOCKS and DIT_BLOCKS[name] is not factory:
            raise ValueError(f"a DiT block named {name!r} is already registered")
        DIT_BLOCKS[name] = factory
        return factory

    return add


def build_block(cfg: DiTConfig, attn_fn: AttentionFn) -> nn.Module:
    if cfg.block not in DIT_BLOCKS:
        raise ValueError(f"model.dit.block={cfg.block!r} is not a registered DiT block; known: {sorted(DIT_BLOCKS)}")
    return DIT_BLOCKS[cfg.block](cfg, attn_fn)


@register_block("wan")
def wan_block(cfg: DiTConfig, attn_fn: AttentionFn) -> DiTBlock:
    """The Wan 2.1 / ChronoEdit block."""
    image = cfg.image_dim is not None
    kw = dict(qk_norm=cfg.qk_norm, cross_attn_norm=cfg.cross_attn_norm, eps=cfg.eps, image=image, attn_fn=attn_fn)
    return DiTBlock(cfg.dim, cfg.ffn_dim, cfg.num_heads, **kw)
