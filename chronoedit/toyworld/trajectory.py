"""The true trajectory of an edit: the scene at every time u ∈ [0, 1] (u = 0 the input, u = 1 the edit).

    move, scale, rotate, swap   ease-in-out e(u) = (1 − cos πu) / 2 of the position / size / angle / arc angle
    recolor                     a linear RGB blend along e(u) (the name changes at u = 1)
    drop                        constant acceleration y = y0 + Δ·(u / u_land)², landing at u_land, then at rest
    swap                        the two rotate clockwise about their midpoint, always diametrically opposite:
                                opposite arcs, their distance constant (they never meet)

An edit is valid in a scene when every state along the way — checked at ``CHECKS_PER_FRAME`` times per frame
interval, so the clip's frames and what lies between them — has every object inside and all bounding circles
apart.
"""

from __future__ import annotations

import math

from chronoedit.toyworld.edits import BIGGER, DIRECTIONS, SMALLER, Edit
from chronoedit.toyworld.world import COLORS, Obj, Scene, apart, inside, valid

FRAMES = 29  # the reasoning video: frame 0 the input, frame 28 the edit
LAND = 24 / 28  # a dropped object lands at frame 24 and rests for the last 4 frames
CHECKS_PER_FRAME = 4


def ease(u: float) -> float:
    return 0.5 - 0.5 * math.cos(math.pi * u)


def lerp(a: float, b: float, t: float) -> float:
    return a * (1 - t) + b * t  # exact at t = 0 and t = 1


def drop_distance(obj: Obj, canvas: int) -> float:
    """How far an object falls until its lowest point rests on the bottom edge."""
    return canvas - obj.extent()[3]


def _target_at(obj: Obj, edit: Edit, canvas: int, u: float) -> Obj:
    e = ease(u)
    if edit.kind == "move":
        dx, dy = DIRECTIONS[edit.direction]
        d = canvas / 4
        return obj.moved(cx=obj.cx + dx * d * e, cy=obj.cy + dy * d * e)
    if edit.kind == "scale":
        return obj.moved(size=lerp(obj.size, obj.size * (BIGGER if edit.bigger else SMALLER), e))
    if edit.kind == "rotate":
        return obj.moved(angle=lerp(obj.angle, obj.angle + edit.degrees, e))
    if edit.kind == "recolor":
        if u >= 1:
            return obj.moved(color=edit.new_color)
        if u <= 0:
            return obj
        tint = tuple(round(lerp(a, b, e)) for a, b in zip(COLORS[obj.color], COLORS[edit.new_color]))
        return obj.moved(tint=tint)
    if edit.kind == "drop":
        t = min(1.0, u / LAND)
        return obj.moved(cy=obj.cy + drop_distance(obj, canvas) * t * t)
    raise ValueError(f"_target_at does not handle {edit.kind!r}")


def movers_at(scene: Scene, edit: Edit, u: float) -> dict[int, Obj]:
    """The edit's target objects at time u, by index (the others do not move)."""
    idx = edit.targets(scene)
    if edit.kind != "swap":
        return {idx[0]: _target_at(scene.objects[idx[0]], edit, scene.canvas, u)}
    a, b = (scene.objects[i] for i in idx)
    if u >= 1:  # exactly exchanged
        return {idx[0]: a.moved(cx=b.cx, cy=b.cy), idx[1]: b.moved(cx=a.cx, cy=a.cy)}
    mx, my = (a.cx + b.cx) / 2, (a.cy + b.cy) / 2
    vx, vy = a.cx - mx, a.cy - my
    phi = math.pi * ease(u)  # clockwise on screen (y down)
    rx, ry = vx * math.cos(phi) - vy * math.sin(phi), vx * math.sin(phi) + vy * math.cos(phi)
    return {idx[0]: a.moved(cx=mx + rx, cy=my + ry), idx[1]: b.moved(cx=mx - rx, cy=my - ry)}


def state_at(scene: Scene, edit: Edit, u: float) -> Scene:
    """The scene at time u of the edit (u = 0: ``scene`` itself)."""
    for i, obj in movers_at(scene, edit, u).items():
        scene = scene.with_object(i, obj)
    return scene


def trajectory(scene: Scene, edit: Edit, frames: int = FRAMES) -> list[Scene]:
    """The ``frames`` states at u = 0, 1/(frames − 1), …, 1: the input, the in-between frames, the edit."""
    return [state_at(scene, edit, i / (frames - 1)) for i in range(frames)]


def edit_is_valid(scene: Scene, edit: Edit, frames: int = FRAMES) -> bool:
    """The target exists and every state along the trajectory is a valid scene (see the module docstring)."""
    try:
        idx = edit.targets(scene)
    except ValueError:
        return False
    if edit.kind == "recolor" and any(o.color == edit.new_color for o in scene.objects):
        return False
    if not valid(state_at(scene, edit, 1.0)):  # most invalid edits end outside the canvas or on another object
        return False
    if edit.kind == "recolor":  # only the colour changes: nothing can leave the canvas or overlap
        return True
    others = [o for j, o in enumerate(scene.objects) if j not in idx]
    steps = (frames - 1) * CHECKS_PER_FRAME
    for i in range(1, steps):  # the two swapped objects stay as far apart as they started
        for obj in movers_at(scene, edit, i / steps).values():
            if not inside(obj, scene.canvas) or not all(apart(obj, o, scene.canvas) for o in others):
                return False
    return True
