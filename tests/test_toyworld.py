"""The toy world: scenes, the edit grammar, true trajectories, the dataset writer — and that a written dataset
trains with the existing pre-encoding and trainer."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from chronoedit.toyworld import KINDS, Edit, parse_prompt, render, sample_example
from chronoedit.toyworld.dataset import DatasetSpec, write_dataset
from chronoedit.toyworld.edits import BIGGER, SMALLER
from chronoedit.toyworld.sample import candidates
from chronoedit.toyworld.segment import find_objects
from chronoedit.toyworld.trajectory import FRAMES, LAND, edit_is_valid
from chronoedit.toyworld.world import COLORS, SIZE_RANGE, Obj, Scene, apart, inside, valid

ROOT = Path(__file__).resolve().parents[1]


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


def test_the_same_seed_gives_the_same_bytes_whatever_the_worker_count(tmp_path):
    spec = DatasetSpec(n=24, seed=3, size=64, clip_ratio=0.3)
    write_dataset(tmp_path / "a", spec)
    write_dataset(tmp_path / "b", spec, workers=2)
    a = digest(tmp_path / "a")
    assert a == digest(tmp_path / "b")
    assert sum(k.startswith("clips/") for k in a) % FRAMES == 0 and any(k.startswith("clips/") for k in a)
    write_dataset(tmp_path / "c", DatasetSpec(n=24, seed=4, size=64, clip_ratio=0.3))
    write_dataset(tmp_path / "t", DatasetSpec(n=24, seed=3, size=64, clip_ratio=0.3, split="test"))
    for other in ("c", "t"):  # another seed, or the test split of the same seed: other examples
        assert digest(tmp_path / other)["in/000000.png"] != a["in/000000.png"]


def test_the_writer_refuses_a_non_empty_folder_and_writes_the_training_format(tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    (out / "precious.txt").write_text("keep")
    tool = [sys.executable, str(ROOT / "tools" / "make_toy_dataset.py"), "--out", str(out), "--n", "7", "--size", "64"]
    r = subprocess.run(tool, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"error: {out} is not empty (pass --overwrite to write into it)"
    ]
    r = subprocess.run([*tool, "--overwrite", "--clip-ratio", "0.5"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "examples/s" in r.stdout and (out / "precious.txt").read_text() == "keep"

    from chronoedit.training.preencode import read_metadata

    rows = read_metadata(out)  # the trainer's own reader accepts every row
    truth = [json.loads(line) for line in (out / "truth.jsonl").read_text().splitlines()]
    assert len(rows) == len(truth) == 7 and {r.is_video for r in rows} == {True, False}
    for row, t in zip(rows, truth):
        assert parse_prompt(row.prompt).to_dict() == t["truth"]["edit"] and row.input == out / t["image"]
        if row.is_video:
            frames = sorted(row.output.iterdir())
            assert len(frames) == FRAMES and frames[0].read_bytes() == row.input.read_bytes()
            assert t["target"] == f"{row.output.relative_to(out)}/{FRAMES - 1:04d}.png"
        assert len(t["truth"]["trajectory"]) == FRAMES
    info = json.loads((out / "dataset.json").read_text())
    assert info["counts"]["pair"] + info["counts"]["clip"] == 7 and info["split"] == "train"


def test_every_prompt_parses_back_to_its_edit():
    for size in (64, 128, 256):
        for i in range(120 if size == 128 else 30):
            ex = sample_example(11, i, size)
            assert parse_prompt(ex.edit.prompt) == ex.edit
            assert parse_prompt("  " + ex.edit.prompt.upper() + " ") == ex.edit  # case and spacing are forgiven
    assert parse_prompt("rotate the red square 45 degrees") == Edit("rotate", "red", "square", degrees=45)
    assert parse_prompt("swap the red square and the blue circle").other_color == "blue"
    for bad in ("move the red square sideways", "make the pink circle bigger", "rotate the red square 30 degrees",
                "drop it", ""):  # fmt: skip
        with pytest.raises(ValueError, match="not a toy-world edit prompt"):
            parse_prompt(bad)
    with pytest.raises(ValueError, match="needs"):
        Edit("move", "red", "square")


def test_scenes_follow_the_rules_at_every_canvas():
    for size in (64, 128, 256):
        k = size / 128
        for i in range(40):
            s = sample_example(0, i, size).scene
            assert 1 <= len(s.objects) <= 3 and len({o.color for o in s.objects}) == len(s.objects)
            assert valid(s) and all(o.angle == 0 for o in s.objects)
            assert all(SIZE_RANGE[0] * k <= o.size <= SIZE_RANGE[1] * k for o in s.objects)
    assert not apart(Obj("circle", "red", 50, 50, 20), Obj("circle", "blue", 72, 50, 20), 128)  # 2 px gap < margin
    assert not inside(Obj("square", "red", 125, 50, 20), 128)


def test_trajectories_are_the_edits_they_name():
    """29 frames from the input to the edit, every one a valid scene; the end states as the grammar says."""
    for i in range(48):
        ex = sample_example(7, i, 128)
        a, b, e = ex.scene, ex.target, ex.edit
        (j, *rest) = e.targets(a)
        o, p = a.objects[j], b.objects[j]
        assert len(ex.frames) == FRAMES and ex.frames[0] == a and all(valid(f) for f in ex.frames)
        if e.kind == "move":
            assert (p.cx - o.cx, p.cy - o.cy) == {"left": (-32, 0), "right": (32, 0), "up": (0, -32),
                                                  "down": (0, 32)}[e.direction]  # fmt: skip
            steps = [f.objects[j].cx + f.objects[j].cy for f in ex.frames]
            gaps = np.diff(steps)
            assert (np.all(gaps >= 0) or np.all(gaps <= 0)) and abs(gaps[0]) < abs(gaps[14])  # eased in
        elif e.kind == "scale":
            assert p.size == pytest.approx(o.size * (BIGGER if e.bigger else SMALLER), abs=1e-3)
        elif e.kind == "rotate":
            assert p.angle == o.angle + e.degrees and o.shape != "circle"
        elif e.kind == "recolor":
            assert p.color == e.new_color and e.new_color not in {q.color for q in a.objects}
            mid = ex.frames[14].objects[j].rgb
            assert all(min(x, y) <= m <= max(x, y) for m, x, y in zip(mid, COLORS[o.color], COLORS[e.new_color]))
        elif e.kind == "drop":
            assert p.extent()[3] == pytest.approx(128) and p.cx == o.cx
            fall = [f.objects[j].cy - o.cy for f in ex.frames]
            t = np.arange(FRAMES) / (FRAMES - 1) / LAND
            assert np.allclose(fall, (p.cy - o.cy) * np.minimum(t, 1) ** 2, atol=1e-3)  # constant acceleration
        elif e.kind == "swap":
            q0, q1 = a.objects[rest[0]], b.objects[rest[0]]
            assert (p.cx, p.cy, q1.cx, q1.cy) == (q0.cx, q0.cy, o.cx, o.cy)
            d = [math.hypot(f.objects[j].cx - f.objects[rest[0]].cx, f.objects[j].cy - f.objects[rest[0]].cy)
                 for f in ex.frames]  # fmt: skip
            assert np.allclose(d, d[0], atol=1e-2)  # opposite arcs: they keep their distance
        others = [k for k in range(len(a.objects)) if k not in e.targets(a)]
        assert all(a.objects[k] == b.objects[k] for k in others)
    assert {sample_example(7, i).edit.kind for i in range(len(KINDS))} == set(KINDS)  # the kinds cycle


def test_invalid_edits_are_never_sampled():
    s = Scene("cream", (Obj("square", "red", 20, 64, 24), Obj("circle", "blue", 84, 64, 24)), 128)
    moves = {e.direction: edit_is_valid(s, e) for e in candidates(s, "move") if e.color == "red"}
    assert moves == {"left": False, "right": False, "up": True, "down": True}  # off the canvas / onto the circle
    assert not edit_is_valid(s, Edit("rotate", "red", "circle", degrees=45))  # the red object is a square
    assert not edit_is_valid(s, Edit("recolor", "red", "square", new_color="blue"))  # blue is in the scene


def test_rendering_puts_each_shape_where_its_numbers_say():
    for shape in ("circle", "square", "triangle"):
        for size, cx, cy in ((11.0, 30.3, 40.8), (24.0, 64.0, 64.0), (47.5, 80.5, 70.25)):
            s = Scene("pale_blue", (Obj(shape, "purple", cx, cy, size, 10.0),), 128)
            hit = find_objects(render(s))["purple"]
            assert math.hypot(hit.cx - cx, hit.cy - cy) < 0.3
            area = {"circle": math.pi / 4, "square": 1.0, "triangle": math.sqrt(3) / 4}[shape] * size * size
            assert hit.area / area == pytest.approx(1.0, abs=0.04)
    hard = np.asarray(render(s, supersample=1)).reshape(-1, 3)
    assert {tuple(c) for c in hard} == {(210, 225, 240), COLORS["purple"]}  # hard edges: palette colours only


@pytest.mark.usefixtures("one_thread")  # tests/conftest.py
def test_a_written_dataset_trains_two_steps_with_the_trainer(tmp_path):
    """Pairs and 29-frame clips through the tiny encoders (train/preencode.py's path) and two trainer steps."""
    from chronoedit.pipeline.components import tiny_components
    from chronoedit.training.config import TrainConfig
    from chronoedit.training.distributed import init_world
    from chronoedit.training.preencode import encoders_from_components, preencode
    from chronoedit.training.preencode_config import PreencodeConfig
    from chronoedit.training.trainer import Trainer

    summary = write_dataset(tmp_path / "data", DatasetSpec(n=4, seed=0, size=64, clip_ratio=0.5))
    assert summary["counts"]["pair"] and summary["counts"]["clip"]
    pc = PreencodeConfig(dataset=str(tmp_path / "data"), output=str(tmp_path / "cache"), height=64, width=64)
    with torch.no_grad():
        meta = preencode(pc, encoders_from_components(tiny_components(0), torch.device("cpu"), torch.float32))
    assert meta["counts"] == {"pair": summary["counts"]["pair"], "video": summary["counts"]["clip"]}
    assert meta["skipped"] == 0
    tc = TrainConfig(steps=2, batch_size=1, micro_batch_size=1, log_every=1)
    tc.data.cache, tc.data.synthetic, tc.data.video_ratio = str(tmp_path / "cache"), None, 0.5
    tc.precision.compute = tc.precision.frozen = "float32"
    tc.lora.rank = 4
    records = Trainer(tc, tmp_path / "run", init_world("cpu")).fit()
    assert len(records) == 2 and all(np.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in records)
