"""The output resolution: keep the input's aspect ratio under an area budget, sides multiples of 16."""

from __future__ import annotations

import math

MULTIPLE = 16  # VAE 8× spatial compression × DiT 2×2 patches
DEFAULT_MAX_AREA = 720 * 1280


def resolve_size(
    image_size: tuple[int, int],
    height: int | None = None,
    width: int | None = None,
    max_area: int = DEFAULT_MAX_AREA,
    multiple: int = MULTIPLE,
) -> tuple[int, int]:
    """(height, width) for an input of ``image_size = (width, height)`` (PIL order).

    Explicit ``height`` and ``width`` are used as given (both, and multiples of ``multiple``). Otherwise the
    reference pipeline's rule: h = round(√(A·r)) // m · m, w = round(√(A/r)) // m · m with r = H/W, A = max_area.
    """
    if (height is None) != (width is None):
        raise ValueError(f"give both height and width or neither (got height={height}, width={width})")
    if height is not None:
        if height <= 0 or width <= 0 or height % multiple or width % multiple:
            raise ValueError(f"height={height} and width={width} must be positive multiples of {multiple}")
        return height, width
    if max_area < multiple * multiple:
        raise ValueError(f"max_area={max_area} is smaller than one {multiple}x{multiple} tile")
    w0, h0 = image_size
    if w0 <= 0 or h0 <= 0:
        raise ValueError(f"image has no pixels (size {image_size})")
    ratio = h0 / w0
    h = round(math.sqrt(max_area * ratio)) // multiple * multiple
    w = round(math.sqrt(max_area / ratio)) // multiple * multiple
    if h < multiple or w < multiple:
        raise ValueError(f"aspect ratio {w0}x{h0} is too extreme for max_area={max_area}: got {w}x{h}")
    return h, w
