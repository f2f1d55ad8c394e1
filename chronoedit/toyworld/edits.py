"""The edit grammar: an :class:`Edit` names its target by colour and shape, its prompt is fixed word for word,
and :func:`parse_prompt` reads a prompt back into the same edit.

    move the {color} {shape} {left|right|up|down}        translate by a quarter of the canvas side
    make the {color} {shape} {bigger|smaller}            size × 1.5 / × 2/3 about the centroid
    turn the {color} {shape} {new color}                 recolour (to a colour not in the scene)
    rotate the {color} {shape} {45|90} degrees           clockwise about the centroid (squares, triangles)
    drop the {color} {shape}                             fall straight down, rest on the bottom edge
    swap the {color} {shape} and the {color} {shape}     exchange positions along opposite arcs
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from chronoedit.toyworld.world import COLORS, SHAPES, Scene

KINDS = ("move", "scale", "recolor", "rotate", "drop", "swap")
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}  # unit steps, y down
BIGGER, SMALLER = 1.5, 2 / 3
ROTATIONS = {"square": (45,), "triangle": (45, 90)}  # a square turned 90° is the same picture: not sampled
SYMMETRY = {"square": 90, "triangle": 120}  # degrees after which a shape looks the same


@dataclass(frozen=True)
class Edit:
    kind: str  # one of KINDS
    color: str  # the target, unique in its scene by colour
    shape: str
    direction: str | None = None  # move
    bigger: bool | None = None  # scale: True × 1.5, False × 2/3
    new_color: str | None = None  # recolor
    degrees: int | None = None  # rotate, clockwise
    other_color: str | None = None  # swap: the second object
    other_shape: str | None = None

    def __post_init__(self) -> None:
        required = {
            "move": ("direction",),
            "scale": ("bigger",),
            "recolor": ("new_color",),
            "rotate": ("degrees",),
            "drop": (),
            "swap": ("other_color", "other_shape"),
        }
        if self.kind not in required:
            raise ValueError(f"edit kind {self.kind!r} is not one of {list(KINDS)}")
        if self.color not in COLORS or self.shape not in SHAPES:
            raise ValueError(f"unknown target {self.color!r} {self.shape!r}")
        missing = [f for f in required[self.kind] if getattr(self, f) is None]
        if missing:
            raise ValueError(f"a {self.kind} edit needs {missing}")

    @property
    def prompt(self) -> str:
        t = f"the {self.color} {self.shape}"
        if self.kind == "move":
            return f"move {t} {self.direction}"
        if self.kind == "scale":
            return f"make {t} {'bigger' if self.bigger else 'smaller'}"
        if self.kind == "recolor":
            return f"turn {t} {self.new_color}"
        if self.kind == "rotate":
            return f"rotate {t} {self.degrees} degrees"
        if self.kind == "drop":
            return f"drop {t}"
        return f"swap {t} and the {self.other_color} {self.other_shape}"

    def targets(self, scene: Scene) -> list[int]:
        """Indices of the objects this edit changes (two for a swap); ValueError when one is not in the scene."""
        idx = [scene.index_of(self.color)] + ([scene.index_of(self.other_color)] if self.kind == "swap" else [])
        for i, (c, s) in zip(idx, ((self.color, self.shape), (self.other_color, self.other_shape))):
            if scene.objects[i].shape != s:
                raise ValueError(f"the {c} object is a {scene.objects[i].shape}, not a {s}")
        return idx

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


_C, _S = "|".join(COLORS), "|".join(SHAPES)
_T = rf"the (?P<color>{_C}) (?P<shape>{_S})"
_GRAMMAR = [
    ("move", re.compile(rf"move {_T} (?P<direction>left|right|up|down)")),
    ("scale", re.compile(rf"make {_T} (?P<bigger>bigger|smaller)")),
    ("recolor", re.compile(rf"turn {_T} (?P<new_color>{_C})")),
    ("rotate", re.compile(rf"rotate {_T} (?P<degrees>45|90) degrees")),
    ("drop", re.compile(rf"drop {_T}")),
    ("swap", re.compile(rf"swap {_T} and the (?P<other_color>{_C}) (?P<other_shape>{_S})")),
]


def parse_prompt(text: str) -> Edit:
    """A prompt of the grammar -> its :class:`Edit` (ValueError for anything else)."""
    text = " ".join(text.strip().lower().split())
    for kind, pattern in _GRAMMAR:
        m = pattern.fullmatch(text)
        if m:
            g = m.groupdict()
            if "bigger" in g:
                g["bigger"] = g["bigger"] == "bigger"
            if "degrees" in g:
                g["degrees"] = int(g["degrees"])
            return Edit(kind=kind, **g)
    raise ValueError(f"not a toy-world edit prompt: {text!r}")
