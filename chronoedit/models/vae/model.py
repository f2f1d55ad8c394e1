"""The Wan 2.1 causal video VAE: encoder, decoder and the :class:`WanVAE` around them.

Video ``(B, 3, F, H, W)`` in [−1, 1] with F = 4k + 1 frames and H, W multiples of 8 <-> latents
``(B, z_dim, T, H/8, W/8)`` with T = k + 1 (Wan 2.1: 8× spatial, 4× temporal compression). Frame 0 is encoded
alone; every later latent frame stands for 4 video frames. Everything is causal in time.
"""

from __future__ import annotations

import functools
import itertools

import torch
from torch import Tensor, nn

from chronoedit.models.vae.cache import CausalCache
from chronoedit.models.vae.config import VAEConfig
from chronoedit.models.vae.layers import (
    AttentionBlock,
    CausalConv3d,
    Downsample,
    NormActConv,
    ResidualBlock,
    Upsample,
    preferred_format,
)
from chronoedit.models.vae.stream import run_depth_first, run_in_strips
from chronoedit.models.vae.tiling import VAETiling, tiled

_CAUSAL = (CausalConv3d, Downsample)  # layers that keep state in a CausalCache


def _name_cache_keys(root: nn.Module) -> None:
    """Key each causal layer's cache entry by its module path (readable, unique within the stream)."""
    for name, module in root.named_modules():
        if isinstance(module, _CAUSAL):
            module.cache_key = name


class Encoder(nn.Module):
    """Video (B, 3, F, H, W) -> (B, 2·z_dim, T, H/s, W/s): residual levels, each but the last ending in a
    (spatio-temporal) downsampling, then residual–attention–residual and the output head."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        dims = [cfg.base_dim * m for m in (1, *cfg.dim_mult)]
        self.conv1 = CausalConv3d(3, dims[0], 3)
        layers: list[nn.Module] = []
        for i, (in_dim, out_dim) in enumerate(itertools.pairwise(dims)):
            for _ in range(cfg.num_res_blocks):
                layers.append(ResidualBlock(in_dim, out_dim))
                in_dim = out_dim
            if i < len(cfg.temporal_downsample):
                layers.append(Downsample(out_dim, temporal=cfg.temporal_downsample[i]))
        self.downsamples = nn.ModuleList(layers)
        d = dims[-1]
        self.middle = nn.ModuleList([ResidualBlock(d, d), AttentionBlock(d), ResidualBlock(d, d)])
        self.head = NormActConv(d, 2 * cfg.z_dim)
        _name_cache_keys(self)

    def layers(self) -> list[nn.Module]:
        return [self.conv1, *self.downsamples, *self.middle, self.head]


class Decoder(nn.Module):
    """Latents (B, z_dim, T, h, w) -> video (B, 3, F, h·s, w·s): conv, residual–attention–residual, residual
    levels each but the last ending in a (spatio-temporal) upsampling that halves the channels, output head."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        dims = [cfg.base_dim * m for m in (cfg.dim_mult[-1], *reversed(cfg.dim_mult))]
        temporal_upsample = cfg.temporal_downsample[::-1]
        self.conv1 = CausalConv3d(cfg.z_dim, dims[0], 3)
        d = dims[0]
        self.middle = nn.ModuleList([ResidualBlock(d, d), AttentionBlock(d), ResidualBlock(d, d)])
        layers: list[nn.Module] = []
        for i, (in_dim, out_dim) in enumerate(itertools.pairwise(dims)):
            if i > 0:
                in_dim //= 2  # the previous level's Upsample halved the channels
            for _ in range(cfg.num_res_blocks + 1):
                layers.append(ResidualBlock(in_dim, out_dim))
                in_dim = out_dim
            if i < len(temporal_upsample):
                layers.append(Upsample(out_dim, temporal=temporal_upsample[i]))
        self.upsamples = nn.ModuleList(layers)
        self.head = NormActConv(dims[-1], 3)
        _name_cache_keys(self)

    def layers(self) -> list[nn.Module]:
        return [self.conv1, *self.middle, *self.upsamples, self.head]

    def strip_start(self) -> int:
        """Index in :meth:`layers` from which every layer is local in space and maps one frame to one frame
        (after the middle attention and the last temporal upsampling): those may run in row strips."""
        layers = self.layers()
        start = 1 + len(self.middle)
        for i, layer in enumerate(layers):
            if isinstance(layer, Upsample) and layer.time_conv is not None:
                start = max(start, i + 1)
        return start


class WanVAE(nn.Module):
    """The Wan 2.1 VAE. ``encode`` returns normalised latents (posterior mean, or a sample), ``decode`` takes
    them back to video clamped to [−1, 1]; the ``*_step`` methods stream a clip chunk by chunk with an explicit
    :class:`CausalCache`. How to run (blended spatial tiles, exact row strips) is the ``tiling`` argument of each
    call (:class:`VAETiling`; default: untiled, 128-row strips), never part of the config. Call under ``torch.no_grad()``
    (or ``inference_mode``) unless gradients are wanted: in-place activations are only used without autograd."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.conv1 = nn.Conv3d(2 * cfg.z_dim, 2 * cfg.z_dim, 1)  # "quant conv": moments of the posterior
        self.conv2 = nn.Conv3d(cfg.z_dim, cfg.z_dim, 1)  # "post-quant conv"
        self.decoder = Decoder(cfg)

    @staticmethod
    def keep_fp32(name: str) -> bool:
        """Parameters kept in fp32 when the model is stored in a lower precision: the norm scales (the norms
        run in fp32 whatever the dtype)."""
        return name.endswith("gamma")

    # ------------------------------------------------------------------ checks
    def check_video(self, video: Tensor, whole_clip: bool = True) -> None:
        """Raise a ValueError naming the shape and the rule, before any compute."""
        s, f = self.cfg.spatial_factor, self.cfg.temporal_factor
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(f"video must be (B, 3, F, H, W), got shape {tuple(video.shape)}")
        _, _, frames, h, w = video.shape
        if h % s or w % s or h == 0 or w == 0:
            raise ValueError(f"video height and width must be positive multiples of {s}, got {tuple(video.shape)}")
        if frames == 0 or (whole_clip and frames % f != 1 % f):
            rule = f"{f}k + 1" if whole_clip else "at least 1"
            raise ValueError(f"video must have {rule} frames, got {frames} (shape {tuple(video.shape)})")

    def check_latents(self, z: Tensor) -> None:
        if z.ndim != 5 or z.shape[1] != self.cfg.z_dim or 0 in z.shape[2:]:
            raise ValueError(f"latents must be (B, z_dim={self.cfg.z_dim}, T ≥ 1, h, w), got {tuple(z.shape)}")

    # ------------------------------------------------------------------ latent statistics
    def _stats(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """mean and 1/std as (1, z_dim, 1, 1, 1) in ``like``'s dtype, computed as the diffusers pipeline does."""
        shape = (1, self.cfg.z_dim, 1, 1, 1)
        mean = torch.tensor(self.cfg.latents_mean, dtype=torch.float32).view(shape).to(like.device, like.dtype)
        inv_std = 1.0 / torch.tensor(self.cfg.latents_std, dtype=torch.float32).view(shape)
        return mean, inv_std.to(like.device, like.dtype)

    def normalize(self, z_raw: Tensor) -> Tensor:
        """Raw latents -> normalised: (z − mean) · (1 / std) per channel."""
        self.check_latents(z_raw)
        mean, inv_std = self._stats(z_raw)
        return (z_raw - mean) * inv_std

    def denormalize(self, z: Tensor) -> Tensor:
        """Normalised latents -> raw: z / (1 / std) + mean per channel."""
        self.check_latents(z)
        mean, inv_std = self._stats(z)
        return z / inv_std + mean

    # ------------------------------------------------------------------ streaming
    def encode_step(self, frames: Tensor, cache: CausalCache | None = None) -> tuple[Tensor, CausalCache]:
        """Encode the next ``frames`` (B, 3, n, H, W) of a clip -> posterior moments (B, 2·z_dim, m, H/8, W/8)
        of the m latent frames they complete (mean first, then log-variance), and the updated cache.

        Chunks of 1, 4, 4, … frames give one latent frame each; any split of a clip gives the same result."""
        self.check_video(frames, whole_clip=False)
        cache = CausalCache() if cache is None else cache
        cache.check_size(frames, "encode_step")
        cache.frames += frames.shape[2]
        x = frames.to(self.conv1.weight.dtype)
        x = x.contiguous(memory_format=preferred_format(x.device, self.cfg.base_dim, x.shape[3]))
        pieces = run_depth_first(self.encoder.layers(), x, cache)
        if not pieces:
            s = self.cfg.spatial_factor
            b, _, _, h, w = frames.shape
            return frames.new_zeros((b, 2 * self.cfg.z_dim, 0, h // s, w // s), dtype=x.dtype), cache
        return self.conv1(torch.cat(pieces, dim=2)).contiguous(), cache

    def decode_step(self, z_raw: Tensor, cache: CausalCache | None = None) -> tuple[Tensor, CausalCache]:
        """Decode the next raw latent frames (B, z_dim, n, h, w) of a clip -> video frames (B, 3, m, 8h, 8w),
        not clamped (m = 1 + 4(n − 1) on the clip's first chunk, else 4n), and the updated cache."""
        self.check_latents(z_raw)
        cache = CausalCache() if cache is None else cache
        cache.check_size(z_raw, "decode_step")
        cache.frames += z_raw.shape[2]
        x = self._post_quant(z_raw)
        pieces = run_depth_first(self.decoder.layers(), x, cache)
        return torch.cat(pieces, dim=2).contiguous(), cache

    def _post_quant(self, z_raw: Tensor) -> Tensor:
        """conv2 on raw latents, laid out as the decoder's full-resolution frames prefer."""
        x = self.conv2(z_raw.to(self.conv2.weight.dtype))
        s = self.cfg.spatial_factor
        return x.contiguous(memory_format=preferred_format(x.device, self.cfg.base_dim, s * x.shape[3]))

    def _tiling(self, tiling: VAETiling | None) -> VAETiling:
        tiling = tiling or VAETiling()
        tiling.check(self.cfg.spatial_factor)
        return tiling

    # ------------------------------------------------------------------ whole clips
    def _encode_untiled(self, video: Tensor) -> Tensor:
        """(B, 3, F, H, W) -> moments (B, 2·z_dim, T, h, w), frames fed in chunks of 1, 4, 4, …"""
        f = self.cfg.temporal_factor
        cache, out = CausalCache(), []
        for start in range(0, video.shape[2], f):
            chunk = video[:, :, max(0, start - f + 1) : start + 1]  # frame 0, then frames 1–4, 5–8, …
            moments, cache = self.encode_step(chunk, cache)
            out.append(moments)
        return torch.cat(out, dim=2)

    def _decode_untiled(self, z_raw: Tensor, rows: int) -> Tensor:
        """Raw latents (B, z_dim, T, h, w) -> video (B, 3, F, H, W), not clamped. With ``cfg.strip_rows`` the
        stages after the last temporal upsampling run in exact row strips of ``rows`` over the buffered frames."""
        height = z_raw.shape[3] * self.cfg.spatial_factor
        if rows == 0 or height <= rows:
            return self.decode_step(z_raw)[0]
        layers = self.decoder.layers()
        split = self.decoder.strip_start()
        scale = self.cfg.spatial_factor // 2 ** sum(isinstance(layer, Upsample) for layer in layers[:split])
        x = self._post_quant(z_raw)
        pieces = run_depth_first(layers[:split], x, CausalCache())
        frames = [f for piece in pieces for f in piece.split(1, dim=2)]  # (B, C, 1, h', w') each
        del pieces
        return run_in_strips(layers[split:], frames, rows // scale)

    def encode_moments(self, video: Tensor, tiling: VAETiling | None = None) -> Tensor:
        """Video (B, 3, F, H, W) -> posterior moments (B, 2·z_dim, T, H/8, W/8): raw mean, then log-variance."""
        self.check_video(video)
        s, tiling = self.cfg.spatial_factor, self._tiling(tiling)
        if tiling.tile and max(video.shape[3:]) > tiling.tile_size:
            tile, overlap = tiling.tile_size // s, tiling.tile_overlap // s
            return tiled(self._encode_untiled, video, tile, overlap, in_scale=s, out_scale=1)
        return self._encode_untiled(video)

    def decode_raw(self, z_raw: Tensor, tiling: VAETiling | None = None) -> Tensor:
        """Raw latents (B, z_dim, T, h, w) -> video (B, 3, 4(T − 1) + 1, 8h, 8w) clamped to [−1, 1]."""
        self.check_latents(z_raw)
        s, tiling = self.cfg.spatial_factor, self._tiling(tiling)
        untiled = functools.partial(self._decode_untiled, rows=tiling.strip_rows)
        if tiling.tile and max(z_raw.shape[3:]) * s > tiling.tile_size:
            tile, overlap = tiling.tile_size // s, tiling.tile_overlap // s
            video = tiled(untiled, z_raw, tile, overlap, in_scale=1, out_scale=s)
        else:
            video = untiled(z_raw)
        return video.clamp(-1.0, 1.0) if video.requires_grad else video.clamp_(-1.0, 1.0)

    def encode(
        self,
        video: Tensor,
        sample: bool = False,
        generator: torch.Generator | None = None,
        tiling: VAETiling | None = None,
    ) -> Tensor:
        """Video (B, 3, F, H, W) in [−1, 1], F = 4k + 1 -> normalised latents (B, z_dim, k + 1, H/8, W/8):
        the posterior mean, or with ``sample`` mean + std · N(0, 1) drawn from ``generator``."""
        moments = self.encode_moments(video, tiling)
        mean, logvar = moments.chunk(2, dim=1)
        z = mean
        if sample:
            std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
            z = mean + std * torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return self.normalize(z)

    def decode(self, z: Tensor, tiling: VAETiling | None = None) -> Tensor:
        """Normalised latents (B, z_dim, T, h, w) -> video (B, 3, 4(T − 1) + 1, 8h, 8w) in [−1, 1]."""
        return self.decode_raw(self.denormalize(z), tiling)

    # ------------------------------------------------------------------ init
    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None) -> WanVAE:
        """Initialise every parameter (for models built on ``meta`` then ``to_empty``, and the tiny demo):
        convs uniform(±1/√fan_in), biases zero, norm gammas one."""
        for name, p in self.named_parameters():
            if name.endswith("gamma"):
                p.fill_(1.0)
            elif p.ndim >= 2:
                bound = (1.0 / p[0].numel()) ** 0.5
                p.copy_(torch.rand(p.shape, generator=generator) * 2 * bound - bound)
            else:
                p.zero_()
        return self


__all__ = ["Decoder", "Encoder", "WanVAE"]
