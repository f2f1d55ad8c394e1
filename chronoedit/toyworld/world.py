"""The toy world: a flat background and 1–3 flat-coloured shapes, every one a different colour.

Coordinates are continuous pixels: x to the right, y down, the canvas is [0, S] × [0, S] (pixel (i, j) covers
[j, j + 1) × [i, i + 1)). An object is placed by its centroid; ``angle`` is in degrees, clockwise on screen.
Every length of the world is given at the reference canvas of 128 px and scaled with the canvas (``scale``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np

REFERENCE_CANVAS = 128
CANVASES = (64, 128, 256)
BACKGROUNDS = {"light_grey": (235, 235, 235), "cream": (245, 235, 215), "pale_blue": (210, 225, 240)}
COLORS = {
    "red": (220, 50, 50),
    "green": (50, 170, 80),
    "blue": (50, 90, 220),
    "yellow": (240, 200, 40),
    "purple": (150, 70, 190),
    "orange": (245, 140, 30),
}
SHAPES = ("circle", "square", "triangle")
SIZE_RANGE = (16, 32)  # object size s at 128 px: circle diameter, square side, triangle side
MAX_OBJECTS = 3
MARGIN = 4.0  # px at 128: the gap kept between bounding circles (blur never mixes two objects' colours)


def scale(canvas: int) -> float:
    """Lengths at ``canvas`` px per length at the reference 128 px."""
    return canvas / REFERENCE_CANVAS


def check_canvas(canvas: int) -> int:
    if canvas not in CANVASES:
        raise ValueError(f"canvas size {canvas} is not one of {list(CANVASES)}")
    return canvas


@dataclass(frozen=True)
class Obj:
    shape: str  # circle | square | triangle
    color: str  # a name in COLORS
    cx: float  # centroid, px
    cy: float
    size: float  # circle diameter, square side, triangle side (px)
    angle: float = 0.0  # degrees clockwise (squares: mod 90, triangles: mod 120 are the same picture)
    tint: tuple[int, int, int] | None = None  # exact RGB of an in-between recolouring frame (None: the palette)

    @property
    def rgb(self) -> tuple[int, int, int]:
        return self.tint if self.tint is not None else COLORS[self.color]

    @property
    def radius(self) -> float:
        """Bounding-circle radius about the centroid (rotation-invariant: the conservative overlap test)."""
        if self.shape == "circle":
            return self.size / 2
        if self.shape == "square":
            return self.size / math.sqrt(2)
        return self.size / math.sqrt(3)  # an equilateral triangle's circumradius

    def vertices(self) -> list[tuple[float, float]]:
        """Corners (x, y) of a square or triangle, clockwise from the top(-left); [] for a circle."""
        if self.shape == "circle":
            return []
        if self.shape == "square":
            h = self.size / 2
            local = [(-h, -h), (h, -h), (h, h), (-h, h)]
        else:  # pointing up: the top vertex at (0, −R) from the centroid, R = s/√3
            r = self.radius
            local = [(r * math.cos(math.radians(a)), r * math.sin(math.radians(a))) for a in (-90, 30, 150)]
        c, s = math.cos(math.radians(self.angle)), math.sin(math.radians(self.angle))
        return [(self.cx + x * c - y * s, self.cy + x * s + y * c) for x, y in local]  # y down: +angle = clockwise

    def extent(self) -> tuple[float, float, float, float]:
        """Exact bounding box (x0, y0, x1, y1) of the shape."""
        if self.shape == "circle":
            r = self.size / 2
            return self.cx - r, self.cy - r, self.cx + r, self.cy + r
        xs, ys = zip(*self.vertices())
        return min(xs), min(ys), max(xs), max(ys)

    def moved(self, **changes) -> Obj:
        return replace(self, **{k: round(v, 4) if isinstance(v, float) else v for k, v in changes.items()})

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("tint")
        return d


@dataclass(frozen=True)
class Scene:
    bg: str  # a name in BACKGROUNDS
    objects: tuple[Obj, ...]
    canvas: int = REFERENCE_CANVAS

    def index_of(self, color: str) -> int:
        """The object of a colour (colours are unique in a scene); ValueError when there is none."""
        for i, o in enumerate(self.objects):
            if o.color == color:
                return i
        raise ValueError(f"no {color} object in the scene")

    def with_object(self, i: int, obj: Obj) -> Scene:
        return replace(self, objects=tuple(obj if j == i else o for j, o in enumerate(self.objects)))

    def to_dict(self) -> dict:
        return {"bg": self.bg, "canvas": self.canvas, "objects": [o.to_dict() for o in self.objects]}

    @staticmethod
    def from_dict(d: dict) -> Scene:
        return Scene(d["bg"], tuple(Obj(**o) for o in d["objects"]), int(d["canvas"]))


def inside(obj: Obj, canvas: int) -> bool:
    """The whole shape lies on the canvas (touching an edge is allowed: a dropped object rests on the bottom)."""
    x0, y0, x1, y1 = obj.extent()
    eps = 1e-3  # px: coordinates are stored to 4 decimals, so a dropped triangle may rest 5e-5 px "below" the edge
    return x0 >= -eps and y0 >= -eps and x1 <= canvas + eps and y1 <= canvas + eps


def apart(a: Obj, b: Obj, canvas: int) -> bool:
    """Bounding circles at least ``MARGIN`` apart (conservative: the shapes themselves are further)."""
    return math.hypot(a.cx - b.cx, a.cy - b.cy) >= a.radius + b.radius + MARGIN * scale(canvas)


def valid(scene: Scene) -> bool:
    """Every object inside the canvas, every pair apart, every colour once."""
    objs = scene.objects
    if len({o.color for o in objs}) != len(objs):
        return False
    if not all(inside(o, scene.canvas) for o in objs):
        return False
    return all(apart(objs[i], objs[j], scene.canvas) for i in range(len(objs)) for j in range(i + 1, len(objs)))


def sample_scene(rng: np.random.Generator, canvas: int = REFERENCE_CANVAS, n_objects: int | None = None) -> Scene:
    """A random valid scene: background, 1–3 objects of distinct colours, integer sizes and centroids."""
    check_canvas(canvas)
    k = scale(canvas)
    bg = list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
    n = int(rng.integers(1, MAX_OBJECTS + 1)) if n_objects is None else n_objects
    colors = [list(COLORS)[int(c)] for c in rng.choice(len(COLORS), size=n, replace=False)]
    while True:  # a few attempts almost always suffice; restart the layout when crowded
        objects: list[Obj] = []
        for color in colors:
            shape = SHAPES[int(rng.integers(len(SHAPES)))]
            size = float(rng.integers(round(SIZE_RANGE[0] * k), round(SIZE_RANGE[1] * k) + 1))
            for _ in range(100):
                lo = math.ceil(size / math.sqrt(2)) + 1  # a square's or triangle's extent is within this
                cx, cy = (float(v) for v in rng.integers(lo, canvas - lo + 1, size=2))
                obj = Obj(shape, color, cx, cy, size)
                if inside(obj, canvas) and all(apart(obj, o, canvas) for o in objects):
                    objects.append(obj)
                    break
        if len(objects) == n:
            return Scene(bg, tuple(objects), canvas)
