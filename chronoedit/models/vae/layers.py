"""Building blocks of the causal video VAE: channel RMS norm, causal convolutions, residual and attention blocks,
spatial / spatio-temporal down- and upsampling.

Shapes: B batch, C channels, T frames of the current chunk, H, W height and width. Every stateful layer takes
``forward(x, cache)``: the :class:`CausalCache` of its stream, read and updated under the layer's ``cache_key``
(its module path, set by the encoder / decoder that owns it). Parameter names are the original Wan 2.1 names,
so ``Wan2.1_VAE.pth`` loads by identity; ``nn.Sequential`` containers exist only to keep those indices.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from chronoedit.models.vae.cache import CausalCache, last_frames, own

_NORM_EPS = 1e-12  # F.normalize's floor on the channel norm, as in the reference


# On CPU, PyTorch runs conv3d with oneDNN when B·C·T·H > 20480 (else with its reference kernel, which wants the
# standard layout); oneDNN is about 1.5× faster on channels-last (B, T, H, W, C in memory) inputs.
_ONEDNN_MIN_BCTH = 20480


def preferred_format(device: torch.device, channels: int, height: int) -> torch.memory_format:
    """The layout to run the network in, judged at its full-resolution stage (``channels`` wide, ``height``
    rows, frames of T = 3 with the causal context): channels-last where CPU conv3d goes to oneDNN."""
    if device.type == "cpu" and 3 * channels * height > _ONEDNN_MIN_BCTH:
        return torch.channels_last_3d
    return torch.contiguous_format


_CHANNELS_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}


def _format_of(x: Tensor) -> torch.memory_format:
    return torch.channels_last_3d if x.is_contiguous(memory_format=torch.channels_last_3d) else torch.contiguous_format


def _default_key(module: nn.Module) -> str:
    return f"{type(module).__name__}@{id(module):x}"


class RMSNorm(nn.Module):
    """x / ‖x‖₂ over channels × √C × γ, computed in fp32 (output in the input dtype).

    ``gamma`` is (C, 1, 1, 1) for videos (B, C, T, H, W) and (C, 1, 1) for frames (N, C, H, W), as stored.
    """

    def __init__(self, dim: int, frames: bool = False) -> None:
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim, 1, 1) if frames else torch.ones(dim, 1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        if xf.is_contiguous(memory_format=_CHANNELS_LAST[xf.ndim]):  # channels innermost: one fast reduction
            norm = torch.linalg.vector_norm(xf, dim=1, keepdim=True)  # (B, 1, …)
        else:  # PyTorch's norm over a strided dim is ~10× slower than this
            norm = xf.square().sum(dim=1, keepdim=True).sqrt_()
        norm = norm.clamp_min(_NORM_EPS)
        out = xf / norm  # keeps x's memory format
        gamma = self.gamma.float() * self.scale
        return (out * gamma if out.requires_grad else out.mul_(gamma)).to(x.dtype)


def norm_silu(norm: RMSNorm, x: Tensor) -> Tensor:
    """SiLU(norm(x)) with one full-size allocation: the activation runs in place on the fresh norm output
    (out of place while autograd records)."""
    y = norm(x)
    return F.silu(y, inplace=not y.requires_grad)


class CausalConv3d(nn.Conv3d):
    """3D convolution, causal in time: the kt − 1 frames of temporal padding all lie in front — the previous
    chunk's last input frames (from the cache) or zeros at the clip start. Spatial padding is k // 2 each side."""

    def __init__(self, in_dim: int, out_dim: int, kernel_size: int | tuple[int, int, int]) -> None:
        k = (kernel_size,) * 3 if isinstance(kernel_size, int) else tuple(kernel_size)
        super().__init__(in_dim, out_dim, k, padding=(0, k[1] // 2, k[2] // 2))
        self.context = k[0] - 1  # past frames each output frame sees
        self.cache_key = _default_key(self)

    def forward(self, x: Tensor, cache: CausalCache) -> Tensor:
        """x (B, C_in, T, H, W) -> (B, C_out, T, H, W); stores x's last frames as the next chunk's context."""
        tail = cache.tails.get(self.cache_key, ())
        missing = self.context - len(tail)  # zero frames in front (clip start)
        weight = self.weight
        parts = [*tail, x]
        if missing and x.shape[2] == 1:
            weight = weight[:, :, missing:]  # the implied zero frames meet only the first taps: drop those
        elif missing:
            parts = [torch.zeros_like(x[:, :, :1])] * missing + parts
        inp = torch.cat(parts, dim=2) if len(parts) > 1 else x  # (B, C_in, context + T, H, W)
        out = F.conv3d(inp, weight, self.bias, padding=self.padding)
        del inp
        cache.tails[self.cache_key] = last_frames(tail, x, self.context)
        return out

    def input_halo(self, halo: int) -> int:
        """Input rows needed beyond a strip to produce ``halo`` exact extra rows around it."""
        return halo + self.kernel_size[1] // 2


class NormActConv(nn.Sequential):
    """RMSNorm → SiLU → causal 3×3×3 conv (the output head; indices 0 and 2 as in Wan's ``head``)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__(RMSNorm(in_dim), nn.SiLU(), CausalConv3d(in_dim, out_dim, 3))

    def forward(self, x: Tensor, cache: CausalCache) -> Tensor:
        norm, _, conv = self
        return conv(norm_silu(norm, x), cache)

    def input_halo(self, halo: int) -> int:
        return halo + 1


class ResidualBlock(nn.Module):
    """x + conv(SiLU(norm(conv(SiLU(norm(x)))))), causal 3×3×3 convs; a 1×1×1 conv shortcut if C changes."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        # Wan indices: 0 norm, 1 SiLU, 2 conv, 3 norm, 4 SiLU, 5 dropout (0 at inference), 6 conv
        self.residual = nn.Sequential(
            RMSNorm(in_dim),
            nn.SiLU(),
            CausalConv3d(in_dim, out_dim, 3),
            RMSNorm(out_dim),
            nn.SiLU(),
            nn.Dropout(0.0),
            CausalConv3d(out_dim, out_dim, 3),
        )
        self.shortcut = nn.Conv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: Tensor, cache: CausalCache) -> Tensor:
        """x (B, C_in, T, H, W) -> (B, C_out, T, H, W)."""
        norm1, _, conv1, norm2, _, _, conv2 = self.residual
        h = conv1(norm_silu(norm1, x), cache)
        h = conv2(norm_silu(norm2, h), cache)
        return h.add_(self.shortcut(x))  # h is a fresh conv output: add in place

    def input_halo(self, halo: int) -> int:
        return halo + 2


class AttentionBlock(nn.Module):
    """Single-head self-attention over the H·W positions of each frame (no temporal mixing), residual."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = RMSNorm(dim, frames=True)
        self.to_qkv = nn.Conv2d(dim, 3 * dim, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: Tensor, cache: CausalCache | None = None) -> Tensor:
        """x (B, C, T, H, W) -> (B, C, T, H, W); ``cache`` is unused (attention is per frame)."""
        b, _, _, h, _ = x.shape
        frames = rearrange(x, "b c t h w -> (b t) c h w")
        qkv = self.to_qkv(self.norm(frames))  # (BT, 3C, H, W)
        q, k, v = rearrange(qkv, "n (three c) h w -> three n 1 (h w) c", three=3)
        out = F.scaled_dot_product_attention(q, k, v)  # (BT, 1, HW, C)
        out = self.proj(rearrange(out, "n 1 (h w) c -> n c h w", h=h))
        return x + rearrange(out, "(b t) c h w -> b c t h w", b=b)


class Downsample(nn.Module):
    """Halve H and W (zero pad right/bottom, 3×3 conv, stride 2, per frame); optionally halve T afterwards.

    The temporal step convolves frames (2k, 2k+1, 2k+2) into output k+1 (3×1×1 kernel, stride 2); the clip's
    first frame passes through unchanged, so F = 1 + 2n frames become 1 + n.
    """

    def __init__(self, dim: int, temporal: bool) -> None:
        super().__init__()
        self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2))
        self.time_conv = nn.Conv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1)) if temporal else None
        self.cache_key = _default_key(self)

    def forward(self, x: Tensor, cache: CausalCache) -> Tensor:
        """x (B, C, T, H, W) -> (B, C, T', H/2, W/2): T' = T, or the temporal windows completed by this chunk."""
        conv = self.resample[1]
        x = F.conv3d(F.pad(x, (0, 1, 0, 1)), conv.weight.unsqueeze(2), conv.bias, stride=(1, 2, 2))
        if self.time_conv is None:
            return x
        out = []
        if self.cache_key not in cache.tails:  # clip start: the first frame passes through
            out.append(x[:, :, :1])
            cache.tails[self.cache_key] = (own(x[:, :, :1]),)
            x = x[:, :, 1:]
        pending = (*cache.tails[self.cache_key], *(x.split(1, dim=2) if x.shape[2] else ()))  # from a window start
        windows = (len(pending) - 1) // 2
        if windows:
            out.append(self.time_conv(torch.cat(pending[: 2 * windows + 1], dim=2)))
        cache.tails[self.cache_key] = tuple(own(f) for f in pending[2 * windows :])
        if not out:  # the window is still open: no frame comes out of this chunk
            return x[:, :, :0]
        return torch.cat(out, dim=2) if len(out) > 1 else out[0]


# Nearest ×2 upsampling followed by a 3×3 conv equals, for each output phase (dy, dx), a 2×2 conv of the
# low-resolution frame: rows {i−1, i} with taps (k0, k1+k2) for dy = 0 and rows {i, i+1} with (k0+k1, k2) for
# dy = 1 (columns alike). _PHASE_TAPS[d, a, k] = 1 when kernel row k feeds tap a of phase d.
_PHASE_TAPS = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]], [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])


def upsample_conv(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """conv3×3(nearest_upsample×2(x)) per frame without building the upsampled input (4× smaller, 2.25× fewer
    multiply-adds). x (B, C, T, H, W), weight (O, C, 3, 3) -> (B, O, T, 2H, 2W)."""
    b, _, t, h, w = x.shape
    o = weight.shape[0]
    taps = _PHASE_TAPS.to(weight.device)
    phases = torch.einsum("yak,oikl,xbl->yxoiab", taps, weight.float(), taps)  # (2, 2, O, C, 2, 2)
    phases = rearrange(phases, "y x o i a b -> (y x o) i 1 a b").to(weight.dtype)
    bias = None if bias is None else bias.repeat(4)
    y = F.conv3d(F.pad(x, (1, 1, 1, 1)), phases, bias)  # (B, 4·O, T, H+1, W+1)
    out = torch.empty((b, o, t, 2 * h, 2 * w), dtype=y.dtype, device=y.device, memory_format=_format_of(x))
    grid = out.view(b, o, t, h, 2, w, 2)  # rows 2i+dy, columns 2j+dx
    for dy in range(2):
        for dx in range(2):
            g = 2 * dy + dx
            grid[:, :, :, :, dy, :, dx] = y[:, g * o : (g + 1) * o, :, dy : dy + h, dx : dx + w]
    return out


def _frames_from_halves(y: Tensor) -> Tensor:
    """(B, 2C, T, H, W) -> (B, C, 2T, H, W): frame 2t is channels [0, C) of frame t, frame 2t+1 the rest."""
    b, c2, t, h, w = y.shape
    out = torch.empty((b, c2 // 2, 2 * t, h, w), dtype=y.dtype, device=y.device, memory_format=_format_of(y))
    out.view(b, c2 // 2, t, 2, h, w).copy_(rearrange(y, "b (two c) t h w -> b c t two h w", two=2))
    return out


class Upsample(nn.Module):
    """Optionally double T (causal 3×1×1 conv to 2C channels, one frame per half), then double H and W
    (nearest ×2, 3×3 conv to C/2 channels). The clip's first frame is not doubled in time: T latents -> 2T − 1."""

    def __init__(self, dim: int, temporal: bool) -> None:
        super().__init__()
        self.resample = nn.Sequential(
            nn.Upsample(scale_factor=(2.0, 2.0), mode="nearest-exact"), nn.Conv2d(dim, dim // 2, 3, padding=1)
        )
        self.time_conv = CausalConv3d(dim, 2 * dim, (3, 1, 1)) if temporal else None

    def forward(self, x: Tensor, cache: CausalCache) -> Tensor:
        """x (B, C, T, H, W) -> (B, C/2, T', 2H, 2W) with T' = T, or 2T (2T − 1 on the clip's first chunk)."""
        if self.time_conv is not None:
            pieces = []
            if self.time_conv.cache_key not in cache.tails:  # clip start: the first frame is not doubled
                pieces.append(x[:, :, :1])
                x = x[:, :, 1:]
                cache.tails[self.time_conv.cache_key] = ()  # the time stream has begun (zeros in front)
            if x.shape[2]:
                pieces.append(_frames_from_halves(self.time_conv(x, cache)))
            x = torch.cat(pieces, dim=2) if len(pieces) > 1 else pieces[0]
        conv = self.resample[1]
        return upsample_conv(x, conv.weight, conv.bias)

    def input_halo(self, halo: int) -> int:
        return (halo + 2) // 2  # output rows r ± (halo + 1) come from input rows ⌊r / 2⌋ ± ⌈(halo + 1) / 2⌉


__all__ = [
    "AttentionBlock",
    "CausalConv3d",
    "Downsample",
    "NormActConv",
    "RMSNorm",
    "ResidualBlock",
    "Upsample",
    "upsample_conv",
]
