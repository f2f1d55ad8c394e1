"""The toy world's metrics: the truth scores 100%, an unchanged copy 0%, both unchanged by noise and blur;
angles, trajectories, segmentation and the confidence intervals measured against known answers."""

from __future__ import annotations

import math
from collections import deque

import numpy as np
import pytest
from PIL import Image, ImageFilter

from chronoedit.toyworld import Edit, Example, render, sample_example
from chronoedit.toyworld.metrics import score_edit, score_video
from chronoedit.toyworld.segment import components, find_objects
from chronoedit.toyworld.stats import mean_ci, summarize, t975, wilson
from chronoedit.toyworld.trajectory import trajectory
from chronoedit.toyworld.world import Obj, Scene


def kind_examples(kind: str, n: int, size: int = 128, seed: int = 21):
    return [sample_example(seed, i, size, "test", (kind,)) for i in range(n)]


def noisy(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    a = np.asarray(im).astype(int) + rng.integers(-15, 16, (*im.size[::-1], 3))  # ±15 RGB, uniform
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


@pytest.mark.parametrize("kind", ["move", "scale", "recolor"])
def test_the_truth_scores_100_percent_and_the_unchanged_input_0_percent(kind):
    for ex in kind_examples(kind, 50):
        target, truth = render(ex.target), ex.truth()
        ok = score_edit(target, truth, target)
        assert ok["success"] and ok["psnr"] == 100.0 and ok["psnr_bg"] == 100.0, (ex.edit.prompt, ok)
        assert ok["centroid_error_px"] < 0.5 and abs(ok["size_ratio"] - 1) < 0.05 and ok["other_drift_px"] < 0.5
        copy = score_edit(render(ex.scene), truth, target)
        assert not copy["success"], (ex.edit.prompt, copy)
        assert copy["psnr"] < 40


@pytest.mark.parametrize("kind", ["rotate", "drop", "swap"])
def test_the_other_kinds_too(kind):
    for ex in kind_examples(kind, 12):
        target, truth = render(ex.target), ex.truth()
        assert score_edit(target, truth, target)["success"]
        assert not score_edit(render(ex.scene), truth, target)["success"], ex.edit.prompt


@pytest.mark.parametrize("size,n", [(64, 12), (256, 6)])
def test_thresholds_scale_with_the_canvas(size, n):
    for ex in [sample_example(2, i, size, "test") for i in range(n)]:  # every kind at least once
        target, truth = render(ex.target), ex.truth()
        assert score_edit(target, truth, target)["success"], ex.edit.prompt
        assert not score_edit(render(ex.scene), truth, target)["success"], ex.edit.prompt


def test_success_is_unchanged_by_noise_and_a_one_pixel_blur():
    rng = np.random.default_rng(0)
    for ex in [sample_example(5, i, 128, "test") for i in range(36)]:  # 6 of each kind
        target, truth, copy = render(ex.target), ex.truth(), render(ex.scene)
        blurred = target.filter(ImageFilter.GaussianBlur(1))
        for im in (noisy(target, rng), blurred, noisy(blurred, rng)):
            row = score_edit(im, truth, target)
            assert row["success"], (ex.edit.prompt, row)
        assert not score_edit(noisy(copy.filter(ImageFilter.GaussianBlur(1)), rng), truth, target)["success"]


def test_a_45_degree_rotation_is_measured_within_3_degrees():
    for shape in ("square", "triangle"):
        for size, cx, cy in ((16.0, 40.0, 40.0), (24.0, 64.3, 70.6), (40.0, 80.0, 60.0)):
            for start in (0.0, 10.0):
                s = Scene("light_grey", (Obj(shape, "green", cx, cy, size, start + 45.0),), 128)
                period = 90 if shape == "square" else 120
                measured = find_objects(render(s))["green"].angle(shape)
                assert abs((measured - start - 45 + period / 2) % period - period / 2) < 3, (shape, size, measured)
    rng = np.random.default_rng(1)
    for ex in kind_examples("rotate", 12):
        target = render(ex.target)
        assert score_edit(target, ex.truth())["angle_error_deg"] < 3
        assert score_edit(noisy(target.filter(ImageFilter.GaussianBlur(1)), rng), ex.truth())["angle_error_deg"] < 3
        assert score_edit(render(ex.scene), ex.truth())["angle_error_deg"] > 25  # 45° away, or 90° ≡ 30° (mod 120)


def test_trajectory_metrics_see_the_true_motion_and_its_reversal():
    for kind in ("move", "drop", "swap"):
        ex = kind_examples(kind, 1)[0]
        frames = [render(f) for f in ex.frames]
        truth = ex.truth()
        row = score_video(frames, truth)
        assert row["traj_error_px"] < 0.5 and row["traj_found"] == 1.0 and row["monotone"] is True
        back = score_video(frames[::-1], truth)
        assert back["monotone"] is False and back["traj_error_px"] > 5
        still = score_video([frames[0]] * len(frames), truth)
        assert still["traj_error_px"] > 5
    recolor = kind_examples("recolor", 1)[0]
    row = score_video([render(f) for f in recolor.frames], recolor.truth())
    assert row["monotone"] is None and row["traj_error_px"] < 0.5 and 0 < row["traj_found"] < 1  # blends unseen
    with pytest.raises(ValueError, match="frames"):
        score_video(frames[:5], truth)


def test_a_vanished_or_moved_bystander_fails_the_edit():
    scene = Scene("cream", (Obj("square", "red", 30, 30, 20), Obj("circle", "blue", 90, 90, 24)), 128)
    edit = Edit("move", "red", "square", direction="right")
    ex = Example(0, scene, edit, trajectory(scene, edit), clip=False)
    truth, target = ex.truth(), ex.target
    assert score_edit(render(target), truth)["success"]
    row = score_edit(render(Scene("cream", target.objects[:1], 128)), truth)
    assert row["others_vanished"] == 1 and not row["success"] and row["centroid_error_px"] < 0.5
    blue = target.objects[1]
    for shift, ok in ((4.0, True), (9.0, False)):  # the drift limit is 6 px at 128
        assert score_edit(render(target.with_object(1, blue.moved(cx=blue.cx + shift))), truth)["success"] is ok
    for cx, ok in ((62 + 4, True), (62 + 9, False)):  # the target within 8 px of the truth
        assert score_edit(render(target.with_object(0, target.objects[0].moved(cx=cx))), truth)["success"] is ok
    row = score_edit(render(Scene("cream", (), 128)), truth)
    assert not row["found"] and row["centroid_error_px"] is None and not row["success"]


def _bfs_components(mask: np.ndarray) -> list[int]:
    seen, sizes = np.zeros_like(mask), []
    h, w = mask.shape
    for y, x in zip(*np.nonzero(mask)):
        if seen[y, x]:
            continue
        seen[y, x], q, n = True, deque([(y, x)]), 0
        while q:
            cy, cx = q.popleft()
            n += 1
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = cy + dy, cx + dx
                    if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        q.append((ny, nx))
        sizes.append(n)
    return sorted(sizes)


def test_components_match_a_plain_flood_fill_and_specks_are_ignored():
    rng = np.random.default_rng(0)
    for p in (0.2, 0.45, 0.6):
        mask = rng.random((40, 50)) < p
        labels, counts = components(mask)
        assert sorted(counts.tolist()) == _bfs_components(mask)
        assert (labels >= 0).sum() == mask.sum() and labels[~mask].max(initial=-1) == -1
    s = Scene("cream", (Obj("circle", "red", 40, 40, 20),), 128)
    a = np.asarray(render(s)).copy()
    a[100:103, 100:103] = (50, 90, 220)  # a 9-pixel blue speck: below the 16-pixel minimum
    found = find_objects(a)
    assert set(found) == {"red"}


def test_confidence_intervals():
    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson(10, 10)[1] == 1.0 and wilson(0, 0) == (0.0, 1.0)
    assert t975(1) == 12.706 and t975(30) == 2.042 and t975(60) == pytest.approx(2.000, abs=2e-3)
    assert t975(120) == pytest.approx(1.980, abs=1e-3)
    lo, hi = mean_ci([1.0, 2.0, 3.0, 4.0])
    assert (lo + hi) / 2 == 2.5 and hi - lo == pytest.approx(2 * 3.182 * math.sqrt(5 / 3) / 2, rel=1e-6)
    assert summarize([True, False, None])["n"] == 2 and summarize([None]) is None
    assert summarize([1, 2, 3])["interval"] == "t" and summarize([True])["interval"] == "wilson"
