"""Find the toy world's objects in any RGB image, from pixels only.

Every pixel is classified to its nearest palette colour (the six object colours and the three backgrounds) if it
is within ``THRESHOLD`` of it, else "unknown": ±15 RGB noise moves a pixel by at most 26 (√3·15), less than half
the closest two object colours' distance (61, yellow–orange), and the blends at a blurred or anti-aliased edge
stay unknown (no object/background blend comes within 49 of a third object colour). Per colour, the 8-connected
components smaller than ``min_area`` are dropped (noise specks, edge rings); the object is the union of the rest.

Area and centroid are "soft": around the object's mask (dilated by 2 px at 128) every pixel counts with its
coverage α, the projection of its colour onto the background → object colour line. A blur or anti-aliasing
moves colour between pixels but keeps Σα, and zero-mean noise keeps it on average, so neither biases the size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from chronoedit.toyworld.world import BACKGROUNDS, COLORS, scale

THRESHOLD = 40.0  # RGB distance within which a pixel takes a palette colour
UNKNOWN, BACKGROUND = -1, len(COLORS)  # labels: 0..5 the object colours (COLORS' order), 6 background
_PALETTE = np.array([*COLORS.values(), *BACKGROUNDS.values()], dtype=np.float32)  # (9, 3)
_CLASS = np.array([*range(len(COLORS)), *[BACKGROUND] * len(BACKGROUNDS)])  # palette row -> label


def min_area(canvas: int) -> int:
    """Components below this many pixels are ignored (16 px at 128; the smallest object has ~49)."""
    return max(3, round(16 * scale(canvas) ** 2))


def as_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8."""
    a = np.asarray(image.convert("RGB")) if isinstance(image, Image.Image) else np.asarray(image)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {a.shape}")
    return a


def classify(image: Image.Image | np.ndarray) -> np.ndarray:
    """(H, W) labels: 0..5 an object colour, BACKGROUND, or UNKNOWN (no palette colour within THRESHOLD)."""
    a = as_array(image).astype(np.float32)
    h, w, _ = a.shape
    flat = a.reshape(-1, 3)  # (N, 3)
    d2 = (flat * flat).sum(1, keepdims=True) - 2 * flat @ _PALETTE.T + (_PALETTE * _PALETTE).sum(1)  # (N, 9)
    nearest = d2.argmin(1)
    close = d2[np.arange(len(flat)), nearest] <= THRESHOLD**2
    return np.where(close, _CLASS[nearest], UNKNOWN).reshape(h, w)


def components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """8-connected components of a boolean (H, W) mask: (H, W) labels (−1 off the mask, else 0..n−1) and the
    (n,) pixel count of each. Min-label propagation with pointer jumping, inside the mask's bounding box."""
    out = np.full(mask.shape, -1, dtype=np.int64)
    if not mask.any():
        return out, np.zeros(0, dtype=np.int64)
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    m = mask[y0:y1, x0:x1]
    h, w = m.shape
    big = h * w
    lab = np.where(m, np.arange(big).reshape(h, w), big)
    while True:
        p = np.pad(lab, 1, constant_values=big)
        new = lab.copy()
        for dy in range(3):
            for dx in range(3):
                np.minimum(new, p[dy : dy + h, dx : dx + w], out=new)
        new = np.where(m, new, big).ravel()
        on = new < big
        new[on] = new[new[on]]  # pointer jumping: a label is a pixel index; take that pixel's label
        new = new.reshape(h, w)
        if np.array_equal(new, lab):
            break
        lab = new
    roots, dense = np.unique(lab[m], return_inverse=True)
    box = np.full((h, w), -1, dtype=np.int64)
    box[m] = dense
    out[y0:y1, x0:x1] = box
    return out, np.bincount(dense, minlength=len(roots))


@dataclass
class Found:
    color: str
    area: float  # Σα, pixels
    cx: float  # α-weighted centroid (pixel centres at +0.5)
    cy: float
    mask: np.ndarray  # (H, W) bool: the pixels classified as this colour (without the dropped components)

    def angle(self, shape: str) -> float | None:
        """Orientation in degrees clockwise from the shape's upright pose, mod its symmetry (90 or 120); None
        for a circle. From the n-th complex moment Σ (z − z̄)ⁿ (n = 4 square, 3 triangle), whose phase turns
        n times as fast as the shape: second moments are isotropic for both shapes and cannot see the angle."""
        if shape == "circle":
            return None
        n, upright = (4, 180.0) if shape == "square" else (3, 90.0)  # phase of the moment at angle 0
        ys, xs = np.nonzero(self.mask)
        z = (xs + 0.5 - self.cx) + 1j * (ys + 0.5 - self.cy)
        moment = (z**n).sum()
        return ((math.degrees(np.angle(moment)) - upright) / n) % (360 / n)


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation by a (2r + 1)² square."""
    h, w = mask.shape
    for _ in range(radius):
        p = np.pad(mask, 1)
        mask = np.logical_or.reduce([p[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)])
    return mask


def background_color(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(3,) the median colour of the background pixels (the first palette background when there are none)."""
    bg = image[labels == BACKGROUND]
    return np.median(bg, axis=0) if len(bg) else np.array(next(iter(BACKGROUNDS.values())), dtype=np.float64)


def find_objects(image: Image.Image | np.ndarray, canvas: int | None = None) -> dict[str, Found]:
    """Every palette-coloured object in the image, by colour name (``canvas``: the scale of ``min_area`` and of
    the soft-area ring; default the image width)."""
    a = as_array(image)
    labels = classify(a)
    canvas = canvas or labels.shape[1]
    keep_area, ring = min_area(canvas), max(1, round(2 * scale(canvas)))
    bg = background_color(a, labels)
    yy, xx = np.mgrid[0 : a.shape[0], 0 : a.shape[1]] + 0.5
    found = {}
    for c, name in enumerate(COLORS):
        mask = labels == c
        if mask.sum() < keep_area:
            continue
        comp, counts = components(mask)
        big = np.nonzero(counts >= keep_area)[0]
        if len(big) == 0:
            continue
        mask = np.isin(comp, big)
        near = dilate(mask, ring) & ((labels == c) | (labels == BACKGROUND) | (labels == UNKNOWN))
        line = np.asarray(COLORS[name], dtype=np.float64) - bg
        alpha = (a[near].astype(np.float64) - bg) @ line / (line @ line)  # (N,) coverage, unclipped: unbiased
        area = float(alpha.sum())
        if area <= 0:
            continue
        cx, cy = float((alpha * xx[near]).sum() / area), float((alpha * yy[near]).sum() / area)
        found[name] = Found(name, area, cx, cy, mask)
    return found


def background_mask(image: Image.Image | np.ndarray) -> np.ndarray:
    """(H, W) bool: the pixels classified as a background colour."""
    return classify(image) == BACKGROUND
