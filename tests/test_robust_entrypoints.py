"""Every entry point, run as a user runs it, refuses an unusable output location before Hydra or anything else
creates it: exit code 2, one line naming the path and the cause, no traceback, within 20 s. And one process per
output folder: a second one given the same folder is refused while the first runs, and neither is harmed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

from chronoedit.files import lock_file_for, lock_output
from tests.test_robust_files import immutable  # noqa: F401 — the fixture

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HYDRA_FULL_ERROR": "0"}
EDIT, TRAIN, PREENCODE, CONVERT = (str(ROOT / p) for p in ("infer/edit.py", "train/train.py", "train/preencode.py",
                                                           "tools/convert.py"))  # fmt: skip
LIMIT_S = 20


def run_all(cases: dict[str, tuple[list[str], Path]], jobs: int = 2) -> dict[str, tuple[int, str, str, float]]:
    """name -> (returncode, stdout, stderr, seconds) of every command line (run ``jobs`` at a time) in its cwd."""
    pending, running, done = list(cases.items()), {}, {}
    while pending or running:
        while pending and len(running) < jobs:
            name, (cmd, cwd) = pending.pop(0)
            proc = subprocess.Popen(cmd, cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            running[name] = (proc, time.perf_counter())
        for name, (proc, t0) in list(running.items()):
            if proc.poll() is not None or time.perf_counter() - t0 > 3 * LIMIT_S:
                try:
                    out, err = proc.communicate(timeout=1)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    out, err = proc.communicate()
                done[name] = (proc.returncode, out, err, time.perf_counter() - t0)
                del running[name]
        time.sleep(0.02)
    return done


def assert_one_line_error(name: str, result: tuple[int, str, str, float], *needles: str, alone: bool = True) -> None:
    """Exit code 2, no traceback, one ``error: …`` line with every needle in it (and with ``alone``, nothing else:
    a check before anything runs; otherwise progress lines may come first)."""
    code, out, err, seconds = result
    lines = [ln for ln in (out + err).splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert code == 2, (name, code, out[-2000:], err[-2000:])
    assert "Traceback" not in out + err and "HYDRA_FULL_ERROR" not in out + err, (name, err[-2000:])
    assert len(errors) == 1 and (not alone or len(lines) == 1), (name, lines)
    assert all(n in errors[0] for n in needles), (name, errors[0], needles)
    assert seconds < LIMIT_S, (name, seconds)


def test_unusable_output_locations_are_refused_before_anything_is_created(tmp_path, immutable):  # noqa: F811
    file = tmp_path / "a_file"
    file.write_text("x")
    ro = immutable
    data = tmp_path / "data"
    data.mkdir()
    (data / "metadata.jsonl").write_text('{"input": "in.png", "output": "out.png", "prompt": "x"}\n')
    cwd = ROOT
    train = [sys.executable, TRAIN, "experiment=tiny_lora_cpu"]
    cases = {
        # train/train.py: Hydra would create run_dir before main() runs
        "train: under a read-only folder": ([*train, f"run_dir={ro}/sub"], cwd, str(ro), "is not writable"),
        "train: a read-only folder": ([*train, f"run_dir={ro}"], cwd, str(ro), "is not writable"),
        "train: an existing file": ([*train, f"run_dir={file}"], cwd, str(file), "exists and is not a folder"),
        "train: under a file": ([*train, f"run_dir={file}/sub"], cwd, f"{file}/sub", "which is a file"),
        # train/preencode.py
        "preencode: under a read-only folder": (
            [sys.executable, PREENCODE, f"dataset={data}", f"output={ro}/cache"],
            cwd,
            str(ro),
            "is not writable",
        ),
        # infer/edit.py: output_dir, and Hydra's default outputs/ in a read-only working directory
        "edit: under a file": (
            [sys.executable, EDIT, "preset=tiny", f"output_dir={file}/x"],
            cwd,
            f"{file}/x",
            "which is a file",
        ),
        "edit: default folder, read-only cwd": (
            [sys.executable, EDIT, "preset=tiny"],
            ro,
            "outputs",
            "is not writable",
        ),
        # tools/convert.py (the other cases are the same check: tests/test_robust_files.py)
        "convert: under a read-only folder": (
            [sys.executable, CONVERT, "--dtype", "bf16", "src", f"{ro}/n"],
            cwd,
            f"{ro}/n",
            "is not writable",
        ),
    }
    results = run_all({name: (cmd, where) for name, (cmd, where, *_) in cases.items()})
    for name, (_, _, *needles) in cases.items():
        assert_one_line_error(name, results[name], *needles)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["a_file", "data", *([ro.name] if ro.parent ==
                                                                 tmp_path else [])])  # fmt: skip
    if ro.parent == tmp_path:
        assert not any(ro.iterdir())
    print(f"{len(cases)} cases, slowest {max(r[3] for r in results.values()):.1f} s")


def one_file_dit(path: Path, layers: int = 1, seed: int = 0) -> Path:
    """A small one-file DiT in Wan naming (width 128, one head: pass ``--model dit.num_heads=1``)."""
    import torch

    from chronoedit.checkpoint.safetensors_io import save_file
    from chronoedit.models.dit import ChronoEditDiT
    from chronoedit.models.dit.config import DIT_PRESETS

    cfg = DIT_PRESETS["tiny"].replace(dim=128, num_heads=1, num_layers=layers)
    save_file(ChronoEditDiT(cfg).init_weights(torch.Generator().manual_seed(seed)).state_dict(), path)
    return path


FULL_DISK = (
    "import runpy, sys; import chronoedit.files as f; f.free_bytes = lambda folder: 4096; "  # a nearly full disk
    "sys.argv = ['tools/convert.py', *sys.argv[1:]]; runpy.run_path(sys.argv[0], run_name='__main__')"
)


def test_a_full_disk_and_a_busy_folder_are_one_line_errors(tmp_path):
    Image.new("RGB", (64, 48), "red").save(tmp_path / "in.png")
    busy = tmp_path / "busy"
    source = one_file_dit(tmp_path / "dit.safetensors")
    lock = lock_output(busy)  # this process holds busy/'s lock, as a running edit or training would
    try:
        cases = {
            "edit: folder in use": (
                [sys.executable, EDIT, "preset=tiny", f"output_dir={busy}", "overwrite=true"],
                ROOT,
            ),
            "train: folder in use": ([sys.executable, TRAIN, "experiment=tiny_lora_cpu", f"run_dir={busy}"], ROOT),
            "convert: disk full": (
                [sys.executable, "-c", FULL_DISK, str(source), str(tmp_path / "n"), "--model", "dit.num_heads=1"],
                ROOT,
            ),
        }
        results = run_all(cases)
    finally:
        lock.release()
    assert_one_line_error("edit: folder in use", results["edit: folder in use"], str(busy), f"pid {os.getpid()}")
    assert_one_line_error("train: folder in use", results["train: folder in use"], str(busy), f"pid {os.getpid()}")
    assert_one_line_error(
        "convert: disk full", results["convert: disk full"], "not enough free space", "dit", alone=False
    )
    assert not busy.exists() and not lock_file_for(busy).exists()
    assert not any(p.name.endswith(".safetensors") for p in (tmp_path / "n").rglob("*"))


def test_two_edits_into_one_folder_at_once(tmp_path):
    """The second is refused while the first runs; the first completes untouched; the lock goes with it."""
    out = tmp_path / "out"
    first = subprocess.Popen([sys.executable, EDIT, "preset=tiny", f"output_dir={out}", "save_latents=true"], cwd=ROOT, env=ENV,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.time() + 60
        while not lock_file_for(out).exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        second = run_all(
            {"second": ([sys.executable, EDIT, "preset=tiny", f"output_dir={out}", "overwrite=true"], ROOT)}
        )
        _, err1 = first.communicate(timeout=120)
    finally:
        first.kill()
    assert first.returncode == 0, err1[-3000:]
    assert_one_line_error("second edit", second["second"], str(out), "in use by pid")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["files"] == ["edit.png", "latents.safetensors"]
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "edit.png", "latents.safetensors", "summary.json"]
    assert not lock_file_for(out).exists()
