"""Edit metrics from pixels only: the predicted image is segmented (``segment.find_objects``) and compared with
the ground truth (``Example.truth()``: the object lists of both end states and the true trajectory).

Per edit (lengths at the canvas's own scale; thresholds are given at 128 px and scale with the canvas):

    centroid_error_px   distance of each target's centroid from the truth (the worst target of a swap)
    size_ratio          sqrt(measured area / true area) of the target (the one furthest from 1 of a swap)
    color_ok            every target found in its true colour (a recoloured one: and its old colour gone)
    angle_error_deg     rotations: |measured − true| angle mod the shape's symmetry (90° squares, 120° triangles)
    other_drift_px      the largest centroid drift of any other object; others_vanished counts the missing ones
    psnr                against the true edit image, all pixels (dB, 8-bit peak)
    psnr_bg             over the pixels that are background in both the truth and the prediction
    success             target(s) found, centroid within 8 px, size within a factor 1.35 (so ×1.5 and ×2/3 of
                        an unchanged copy both fail), right colour, rotations within 10°, no other object
                        moved by more than 6 px and none vanished

Per reasoning video (the decoded frames, one per truth trajectory frame): ``traj_error_px`` the mean distance
of the target's centroid from the true trajectory over the frames where it is found (``traj_found`` their
share); ``monotone`` for moves, drops and swaps: the projection on the true start→end axis never falls back by
more than 2 px below its running maximum.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from chronoedit.toyworld.edits import SYMMETRY
from chronoedit.toyworld.segment import Found, as_array, background_mask, find_objects
from chronoedit.toyworld.world import Obj, Scene, scale

CENTROID_TOL = 8.0  # px at 128
SIZE_FACTOR = 1.35
ANGLE_TOL = 10.0  # degrees
DRIFT_TOL = 6.0  # px at 128
MONOTONE_TOL = 2.0  # px at 128
MOTION_KINDS = ("move", "drop", "swap")


def true_area(obj: Obj) -> float:
    s = obj.size
    return {"circle": math.pi * s * s / 4, "square": s * s, "triangle": math.sqrt(3) / 4 * s * s}[obj.shape]


def psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float | None:
    """PSNR in dB of two (H, W, 3) uint8 images over ``mask`` (all pixels when None); None on an empty mask,
    capped at 100 dB for identical pixels."""
    d = (a.astype(np.float64) - b.astype(np.float64)) ** 2
    if mask is not None:
        if not mask.any():
            return None
        d = d[mask]
    mse = float(d.mean())
    return 100.0 if mse <= 1e-10 else min(100.0, 10 * math.log10(255.0**2 / mse))


def fit(image: Image.Image, canvas: int) -> Image.Image:
    """The prediction at the truth's canvas size (bicubic when the pipeline ran at another size)."""
    image = image.convert("RGB")
    if image.size != (canvas, canvas):
        image = image.resize((canvas, canvas), resample=Image.Resampling.BICUBIC)
    return image


def _angle_error(found: Found, obj: Obj) -> float | None:
    measured = found.angle(obj.shape)
    if measured is None:
        return None
    period = SYMMETRY[obj.shape]
    return abs((measured - obj.angle + period / 2) % period - period / 2)


def score_edit(pred: Image.Image, truth: dict, target: Image.Image | None = None) -> dict:
    """The metrics of one predicted edit (``target``: the true edit image, for the PSNRs)."""
    before, after = Scene.from_dict(truth["before"]), Scene.from_dict(truth["after"])
    canvas, k = after.canvas, scale(after.canvas)
    pred = fit(pred, canvas)
    found = find_objects(pred, canvas)
    targets = truth["targets"]
    row: dict = {"kind": truth["kind"]}

    hits = [found.get(after.objects[j].color) for j in targets]
    row["found"] = all(h is not None for h in hits)
    errors, ratios, angles = [], [], []
    for j, hit in zip(targets, hits):
        if hit is None:
            continue
        obj = after.objects[j]
        errors.append(math.hypot(hit.cx - obj.cx, hit.cy - obj.cy))
        ratios.append(math.sqrt(hit.area / true_area(obj)))
        if truth["kind"] == "rotate":
            angles.append(_angle_error(hit, obj))
    row["centroid_error_px"] = max(errors) if errors else None
    row["size_ratio"] = max(ratios, key=lambda r: abs(math.log(r))) if ratios else None
    old_gone = all(before.objects[j].color == after.objects[j].color or before.objects[j].color not in found
                   for j in targets)  # fmt: skip
    row["color_ok"] = row["found"] and old_gone
    row["angle_error_deg"] = max(angles) if angles and None not in angles else None

    drifts, vanished = [], 0
    for j, obj in enumerate(after.objects):
        if j in targets:
            continue
        hit = found.get(obj.color)
        if hit is None:
            vanished += 1
        else:
            drifts.append(math.hypot(hit.cx - obj.cx, hit.cy - obj.cy))
    row["other_drift_px"] = max(drifts) if drifts else (0.0 if not vanished else None)
    row["others_vanished"] = vanished
    row["extra_objects"] = len(set(found) - {o.color for o in after.objects})

    ok = row["found"] and row["color_ok"] and vanished == 0
    ok = ok and row["centroid_error_px"] <= CENTROID_TOL * k
    ok = ok and 1 / SIZE_FACTOR <= row["size_ratio"] <= SIZE_FACTOR
    ok = ok and (row["other_drift_px"] or 0.0) <= DRIFT_TOL * k
    if truth["kind"] == "rotate":
        ok = ok and row["angle_error_deg"] is not None and row["angle_error_deg"] <= ANGLE_TOL
    row["success"] = bool(ok)

    if target is not None:
        p, t = as_array(pred), as_array(fit(target, canvas))
        row["psnr"] = psnr(p, t)
        row["psnr_bg"] = psnr(p, t, background_mask(p) & background_mask(t))
    return row


def score_video(frames: list[Image.Image], truth: dict) -> dict:
    """Trajectory metrics of a decoded reasoning video against the truth (one frame per trajectory frame)."""
    traj = truth["trajectory"]  # (frames, targets, 2)
    if len(frames) != len(traj):
        raise ValueError(f"a reasoning video of {len(frames)} frames, the truth has {len(traj)}")
    before, after = Scene.from_dict(truth["before"]), Scene.from_dict(truth["after"])
    canvas, k = after.canvas, scale(after.canvas)
    targets = truth["targets"]
    colors = [{before.objects[j].color, after.objects[j].color} for j in targets]
    errors, seen = [], 0
    paths: list[list[tuple[float, float]]] = [[] for _ in targets]
    for frame, true_xy in zip(frames, traj):
        found = find_objects(fit(frame, canvas), canvas)
        for t, (names, (tx, ty)) in enumerate(zip(colors, true_xy)):
            hits = [found[c] for c in names if c in found]
            seen += bool(hits)
            if hits:
                hit = max(hits, key=lambda h: h.area)
                errors.append(math.hypot(hit.cx - tx, hit.cy - ty))
                paths[t].append((hit.cx, hit.cy))
    row: dict = {"traj_error_px": float(np.mean(errors)) if errors else None}
    row["traj_found"] = seen / (len(traj) * len(targets))
    row["monotone"] = None
    if truth["kind"] in MOTION_KINDS:
        monotone = True
        for t, path in enumerate(paths):
            (x0, y0), (x1, y1) = traj[0][t], traj[-1][t]
            length = math.hypot(x1 - x0, y1 - y0)
            proj = [((x - x0) * (x1 - x0) + (y - y0) * (y1 - y0)) / length for x, y in path]
            monotone = (
                monotone
                and len(proj) >= 2
                and all(p >= m - MONOTONE_TOL * k for p, m in zip(proj[1:], np.maximum.accumulate(proj)[:-1]))
            )
        row["monotone"] = bool(monotone)
    return row
