"""The DiT's conditioning input: the first-frame mask and the encoded [image, zeros…] video.

Shapes: B batch, F video frames (4k+1), T = (F−1)/4 + 1 latent frames, h × w latent size.
"""

from __future__ import annotations

import torch
from einops import rearrange, repeat
from torch import Tensor

TEMPORAL = 4  # VAE temporal compression: latent frame t covers video frames 4t−3 … 4t (frame 0 alone)


def check_num_frames(num_frames: int) -> int:
    """Frame counts the causal VAE takes: 4k+1 (1, 5, 9, … 29, …). Returns the latent frame count."""
    if num_frames < 1 or (num_frames - 1) % TEMPORAL:
        raise ValueError(f"num_frames={num_frames} must be 4k+1 (1, 5, 9, …, 29, …)")
    return (num_frames - 1) // TEMPORAL + 1


def latent_mask(known_frames: Tensor, h: int, w: int) -> Tensor:
    """Video-frame mask (B, F) of 1 = known, 0 = to generate -> latent mask (B, 4, T, h, w).

    The first frame is repeated 4× so every latent frame covers 4 mask entries; entry c of latent frame t
    is video frame 4t + c − 3 (frame 0 for t = 0). With only frame 0 known: 1 on latent frame 0, else 0.
    """
    m = torch.cat([repeat(known_frames[:, :1], "b 1 -> b r", r=TEMPORAL), known_frames[:, 1:]], dim=1)  # (B, 4T)
    m = rearrange(m, "b (t c) -> b c t", c=TEMPORAL)  # (B, 4, T)
    return repeat(m, "b c t -> b c t h w", h=h, w=w)


def first_frame_video(image: Tensor, num_frames: int) -> Tensor:
    """(B, 3, H, W) image in [−1, 1] -> (B, 3, F, H, W): the image followed by F−1 black (zero) frames."""
    check_num_frames(num_frames)
    b, c, h, w = image.shape
    return torch.cat([image[:, :, None], image.new_zeros(b, c, num_frames - 1, h, w)], dim=2)


def build_condition(latents: Tensor, num_frames: int) -> Tensor:
    """Condition (B, 20, T, h, w) = [mask (4), normalised latents of [image, zeros…] (16)] on channels."""
    b, _, t, h, w = latents.shape
    if check_num_frames(num_frames) != t:
        raise ValueError(f"latents have {t} frames, num_frames={num_frames} gives {check_num_frames(num_frames)}")
    known = torch.zeros(b, num_frames, dtype=latents.dtype, device=latents.device)
    known[:, 0] = 1
    return torch.cat([latent_mask(known, h, w), latents], dim=1)
