"""Seeded examples: a scene, a valid edit of a given kind, its trajectory and its ground truth.

Example ``index`` of (``split``, ``seed``) is drawn from its own generator ``default_rng([split id, seed,
index])``: it does not depend on how many examples are drawn, in which order, or by how many processes, and the
train and test splits of one seed never share a stream. Kinds cycle with the index (balanced splits).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from chronoedit.toyworld.edits import DIRECTIONS, KINDS, ROTATIONS, Edit
from chronoedit.toyworld.trajectory import FRAMES, drop_distance, edit_is_valid, trajectory
from chronoedit.toyworld.world import COLORS, REFERENCE_CANVAS, Scene, check_canvas, sample_scene, scale

SPLITS = {"train": 0, "test": 1}
MIN_DROP = 16.0  # px at 128: a drop shorter than twice the success radius would be invisible to the metric


def candidates(scene: Scene, kind: str) -> list[Edit]:
    """Every edit of ``kind`` the grammar allows in ``scene`` (validity not yet checked)."""
    objs = scene.objects
    out: list[Edit] = []
    for o in objs:
        t = {"color": o.color, "shape": o.shape}
        if kind == "move":
            out += [Edit("move", **t, direction=d) for d in DIRECTIONS]
        elif kind == "scale":
            out += [Edit("scale", **t, bigger=b) for b in (True, False)]
        elif kind == "recolor":
            used = {p.color for p in objs}
            out += [Edit("recolor", **t, new_color=c) for c in COLORS if c not in used]
        elif kind == "rotate":
            out += [Edit("rotate", **t, degrees=d) for d in ROTATIONS.get(o.shape, ())]
        elif kind == "drop":
            if drop_distance(o, scene.canvas) >= MIN_DROP * scale(scene.canvas):
                out.append(Edit("drop", **t))
        elif kind != "swap":
            raise ValueError(f"edit kind {kind!r} is not one of {list(KINDS)}")
    if kind == "swap":
        out = [
            Edit("swap", a.color, a.shape, other_color=b.color, other_shape=b.shape)
            for a, b in itertools.permutations(objs, 2)
        ]
    return out


def sample_edit(scene: Scene, kind: str, rng: np.random.Generator) -> Edit | None:
    """A random valid edit of ``kind`` in ``scene``, or None when the scene allows none."""
    cands = candidates(scene, kind)
    for i in rng.permutation(len(cands)):
        if edit_is_valid(scene, cands[int(i)]):
            return cands[int(i)]
    return None


@dataclass
class Example:
    index: int
    scene: Scene  # the input
    edit: Edit
    frames: list[Scene]  # the true trajectory, FRAMES states: frames[0] is ``scene``, frames[-1] the edit
    clip: bool  # written as a video-prior clip (output = the trajectory's frames) rather than an edit pair

    @property
    def target(self) -> Scene:
        return self.frames[-1]

    def truth(self) -> dict:
        """The ground truth as JSON: the edit, both end states, the target objects' centroids per frame."""
        idx = self.edit.targets(self.scene)
        return {
            "kind": self.edit.kind,
            "edit": self.edit.to_dict(),
            "targets": idx,
            "before": self.scene.to_dict(),
            "after": self.target.to_dict(),
            "trajectory": [[[f.objects[i].cx, f.objects[i].cy] for i in idx] for f in self.frames],
        }


def sample_example(
    seed: int,
    index: int,
    canvas: int = REFERENCE_CANVAS,
    split: str = "train",
    kinds: tuple[str, ...] = KINDS,
    clip_ratio: float = 0.0,
) -> Example:
    """Example ``index`` of the (split, seed) stream: its kind is ``kinds[index % len(kinds)]``."""
    check_canvas(canvas)
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {list(SPLITS)}")
    rng = np.random.default_rng([SPLITS[split], seed, index])
    kind = kinds[index % len(kinds)]
    while True:
        scene = sample_scene(rng, canvas)  # redrawn until it allows an edit of the kind (a swap needs two objects)
        edit = sample_edit(scene, kind, rng)
        if edit is not None:
            break
    clip = bool(rng.random() < clip_ratio)  # drawn last: the scene and edit do not depend on clip_ratio
    return Example(index, scene, edit, trajectory(scene, edit, FRAMES), clip)
