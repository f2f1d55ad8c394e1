"""The causal state of a video stream: what each causal layer must remember of the previous chunks."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

Frames = tuple[Tensor, ...]  # single frames, each (B, C, 1, H, W), oldest first


@dataclass
class CausalCache:
    """State carried from one chunk of a clip to the next, for one encoder or decoder stream.

    ``tails[name]`` holds, for the causal layer at module path ``name``, the last input frames it needs as
    temporal context (at most kernel − 1). A layer without an entry has not seen the clip's first frame: causal
    convolutions pad with zeros in front and the temporal resamplers pass that frame through unchanged.

    Steps update the cache in place and return it, so that each old tail is released as soon as its layer has
    its new one; :meth:`copy` keeps a snapshot (stored frames are never modified in place, only replaced).
    """

    tails: dict[str, Frames] = field(default_factory=dict)
    frames: int = 0  # frames fed to the stream so far (video frames for the encoder, latents for the decoder)
    size: tuple[int, int, int] | None = None  # (B, H, W) of the stream's input, fixed by its first chunk

    def copy(self) -> CausalCache:
        return CausalCache(dict(self.tails), self.frames, self.size)

    def check_size(self, x: Tensor, what: str) -> None:
        """Fix the stream's (B, H, W) on the first chunk; a later chunk of another size is a ValueError."""
        b, _, _, h, w = x.shape
        if self.size is None:
            self.size = (b, h, w)
        elif self.size != (b, h, w):
            raise ValueError(
                f"{what} chunk {tuple(x.shape)} does not continue the stream: it started with (B, H, W) = {self.size}"
            )


def own(frame: Tensor) -> Tensor:
    """``frame`` itself if it owns its storage, else a copy: a view stored in a cache would pin its whole base."""
    if frame.untyped_storage().nbytes() > frame.numel() * frame.element_size():
        return frame.clone()
    return frame


def last_frames(tail: Frames, x: Tensor, n: int) -> Frames:
    """The last ``n`` frames of ``tail`` followed by the frames of ``x`` (B, C, T, H, W)."""
    if n == 0:
        return ()
    new = tuple(own(f) for f in x.split(1, dim=2)[-n:])
    old = tail[max(0, len(tail) - (n - len(new))) :] if len(new) < n else ()
    return (*old, *new)


__all__ = ["CausalCache", "Frames", "last_frames", "own"]
