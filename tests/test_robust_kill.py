"""SIGKILL in the middle of writing: the edit's outputs (edit.png, frames/, latents.safetensors, video.webp,
summary.json) and a conversion's files are never left half-written under their final names. Whatever exists
under a final name afterwards is complete and loads; only ``*.tmp`` leftovers may be partial.

Most kills hit a forked copy of a worker that has imported everything once (so that 24 kills fit in seconds):
the child runs exactly what the entry points run to write — ``write_outputs`` of infer/edit.py's job, and
``tools/convert.py`` itself (its ``__main__``, through runpy). A few more kill the real entry points started as
a user starts them, once they begin writing."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
FORKED_KILLS = 10  # per writer (edit, convert)
TEMP_SUFFIXES = (".tmp", ".tmp.mp4")


def is_leftover(p: Path) -> bool:
    return ".tmp" in p.name or p.name.endswith(".old") or (p.name.startswith(".") and p.name.endswith(".lock"))


def final_files(folder: Path, seen: dict[str, int]):
    """The files under their final names in ``folder``, counting them and the leftovers (``*.tmp``, locks)."""
    if not folder.is_dir():
        return
    for p in folder.iterdir():
        if is_leftover(p):
            seen["leftovers"] += 1
            continue
        seen["complete"] += 1
        yield p


def check_edit_folder(folder: Path, expected: dict) -> dict[str, int]:
    """Every file under a final name in an edit's folder is whole (and equals what was being written)."""
    seen = {"complete": 0, "leftovers": 0}
    for p in final_files(folder, seen):
        if p.name == "edit.png":
            with Image.open(p) as im:
                assert im.convert("RGB").tobytes() == expected["edit"], p
        elif p.name == "frames":
            names = sorted(f.name for f in p.iterdir())
            assert names == [f"{n:04d}.png" for n in range(len(expected["frames"]))], (p, names)
            for n, name in enumerate(names):
                with Image.open(p / name) as im:
                    assert im.convert("RGB").tobytes() == expected["frames"][n], p / name
        elif p.name == "latents.safetensors":
            from chronoedit.checkpoint.safetensors_io import SafetensorsFile, read_tensor

            assert torch.equal(read_tensor(SafetensorsFile(p)["latents"]), expected["latents"]), p
        elif p.name == "video.webp":
            with Image.open(p) as im:
                assert im.n_frames == len(expected["frames"]), p
                im.seek(im.n_frames - 1)
                im.load()
        elif p.name == "summary.json":
            summary = json.loads(p.read_text())
            assert summary["frames"] == len(expected["frames"])
            for name in summary["files"]:  # written last: everything it lists is there
                assert (folder / name.split(" ")[0]).exists(), (folder, name)
        else:
            raise AssertionError(f"unexpected file {p}")
    return seen


def check_convert_folder(folder: Path, expected: dict[str, torch.Tensor]) -> dict[str, int]:
    from chronoedit.checkpoint.dit import load_dit
    from chronoedit.checkpoint.safetensors_io import SafetensorsFile, read_tensor

    seen = {"complete": 0, "leftovers": 0}
    for p in final_files(folder, seen):
        if p.name == "dit.safetensors":
            f = SafetensorsFile(p)
            assert sorted(f) == sorted(expected), p
            assert all(torch.equal(read_tensor(f[k]), expected[k]) for k in expected), p
        elif p.name == "chronoedit.yaml":  # the index comes last: the checkpoint it describes is whole
            got = load_dit(folder, dtype=torch.float32).state_dict()
            assert all(torch.equal(got[k], expected[k].float()) for k in expected), folder
        else:
            raise AssertionError(f"unexpected file {p}")
    return seen


def _edit_result():
    """A reasoning edit of the tiny model (29 frames: frames/, video.webp), small and quick."""
    from chronoedit.pipeline.components import load_components
    from chronoedit.pipeline.pipeline import EditPipeline, EditRequest
    from chronoedit.sampling import SamplerConfig

    pipe = EditPipeline(load_components("tiny", dtype=torch.float32), device="cpu", dtype=torch.float32)
    request = EditRequest(image=Image.new("RGB", (128, 96), "orange"), prompt="x", reasoning_steps=2, height=96,
                          width=128, guidance_scale=1.0)  # fmt: skip
    return pipe(request, SamplerConfig(steps=2)), request


def _fork(run) -> int:
    pid = os.fork()
    if pid == 0:  # the child: write, then leave without any clean-up of the parent's state
        try:
            run()
        finally:
            os._exit(0)
    return pid


def _writing(dest: Path) -> bool:
    """The writer has begun: its folder has an entry."""
    try:
        return any(True for _ in os.scandir(dest))
    except FileNotFoundError:
        return False


def _running(pid: int) -> bool:
    return os.waitpid(pid, os.WNOHANG) == (0, 0)


def _fork_and_kill(run, dest: Path, delay: float) -> bool:
    """Run ``run()`` in a forked child, SIGKILL it ``delay`` s after it began writing into ``dest``; True if it
    was still running then."""
    pid = _fork(run)
    while _running(pid) and not _writing(dest):
        time.sleep(0.0005)
    time.sleep(delay)
    if not _running(pid):
        return False  # it had finished
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return True


def _fork_and_wait(run, dest: Path, timeout: float = 60.0) -> float:
    """Seconds a whole ``run()`` in a forked child spends writing into ``dest`` (from its first entry on)."""
    t0 = time.perf_counter()
    pid = _fork(run)
    start = None
    while _running(pid):
        if start is None and _writing(dest):
            start = time.perf_counter()
        if time.perf_counter() - t0 > timeout:
            os.kill(pid, signal.SIGKILL)
            raise AssertionError(f"a whole write took over {timeout} s")
        time.sleep(0.0005)
    return time.perf_counter() - (start or t0)


def kill_worker(folder: str, kills: int, seed: int) -> None:
    """In a fresh process: ``kills`` forked edit writes and ``kills`` forked conversions, each SIGKILLed at a
    random point of its write (uniform over 1.3 × a whole write's duration from its first file on, so some
    finish); every folder checked. Prints the counts."""
    import runpy

    import chronoedit.checkpoint.convert  # noqa: F401 — imported once here, not in every forked child
    from chronoedit.pipeline.config import EditConfig
    from chronoedit.pipeline.job import write_outputs
    from tests.test_robust_entrypoints import one_file_dit

    torch.set_num_threads(1)
    rng = random.Random(seed)
    folder = Path(folder)
    result, request = _edit_result()
    cfg = EditConfig(save_frames=True, save_latents=True, fps=8)
    expected = {"edit": result.image.tobytes(), "frames": [f.tobytes() for f in result.frames],
                "latents": result.latents.contiguous()}  # fmt: skip
    source = one_file_dit(folder / "wan_dit.safetensors", layers=6, seed=seed)
    from chronoedit.checkpoint.safetensors_io import SafetensorsFile, read_tensor

    src = SafetensorsFile(source)
    converted = {k: read_tensor(src[k]) for k in src}
    from chronoedit.models.dit import ChronoEditDiT

    converted = {k: v if ChronoEditDiT.keep_fp32(k) else v.to(torch.bfloat16) for k, v in converted.items()}

    def convert(dest: Path):
        def run():
            sys.argv = ["tools/convert.py", str(source), str(dest), "--dtype", "bf16", "--model", "dit.num_heads=1"]
            sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115 — the child dies with it
            runpy.run_path(str(ROOT / "tools" / "convert.py"), run_name="__main__")

        return run

    writers = {
        "edit": (
            lambda dest: lambda: write_outputs(result, dest, cfg, request),
            lambda d: check_edit_folder(d, expected),
        ),
        "convert": (convert, lambda d: check_convert_folder(d, converted)),
    }
    report = {}
    for name, (make, check) in writers.items():
        _fork_and_wait(make(folder / f"{name}_warm"), folder / f"{name}_warm")  # imports what the parent did not
        whole = _fork_and_wait(make(folder / f"{name}_whole"), folder / f"{name}_whole")
        assert check(folder / f"{name}_whole")["complete"] >= 2, name
        counts = {"killed mid-write": 0, "finished before the kill": 0, "files complete": 0, "tmp leftovers": 0}
        for i in range(kills):
            dest = folder / f"{name}_{i:02d}"
            killed = _fork_and_kill(make(dest), dest, rng.uniform(0.0, 1.3 * whole))
            counts["killed mid-write" if killed else "finished before the kill"] += 1
            seen = check(dest)
            counts["files complete"] += seen["complete"]
            counts["tmp leftovers"] += seen["leftovers"]
        report[name] = {"whole_write_s": round(whole, 3), **counts}
    print(json.dumps(report))


@pytest.mark.slow
def test_sigkill_mid_write_leaves_no_half_file_under_a_final_name(tmp_path):
    code = f"from tests.test_robust_kill import kill_worker; kill_worker({str(tmp_path)!r}, {FORKED_KILLS}, 7)"
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"forked writers, SIGKILLed ({time.perf_counter() - t0:.1f} s): {json.dumps(report)}")
    for name, r in report.items():
        assert r["killed mid-write"] + r["finished before the kill"] == FORKED_KILLS
        assert r["killed mid-write"] >= FORKED_KILLS // 3, (name, r)

    # the real entry points, as a user starts them, killed once they have begun writing
    from chronoedit.checkpoint.safetensors_io import SafetensorsFile, read_tensor
    from tests.test_robust_entrypoints import one_file_dit

    rng = random.Random(11)
    source = one_file_dit(tmp_path / "src.safetensors", layers=6)
    real = 0
    for i in range(1):
        out_dir = tmp_path / f"real_edit_{i}"
        cmd = [sys.executable, str(ROOT / "infer" / "edit.py"), "preset=tiny", f"output_dir={out_dir}", "save_frames=true",
               "save_latents=true", "reasoning.steps=2", "sampler.steps=2", "height=96", "width=128"]  # fmt: skip
        proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while proc.poll() is None and time.time() < deadline and not any(out_dir.glob("edit.png*")):
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.15))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        real += 1
        for p in out_dir.iterdir():  # whole files only (the values are checked against the forked runs above)
            if p.name == "edit.png":
                Image.open(p).load()
            elif p.name == "latents.safetensors":
                read_tensor(SafetensorsFile(p)["latents"])
            elif p.name == "frames":
                for f in p.iterdir():
                    Image.open(f).load()
            elif p.name == "video.webp":
                with Image.open(p) as im:
                    im.seek(im.n_frames - 1)
                    im.load()
            elif p.name == "summary.json":
                json.loads(p.read_text())
            else:
                assert is_leftover(p) or p.name == "config.yaml", p
        dest = tmp_path / f"real_convert_{i}"
        deadline = time.time() + 120
        convert = [
            sys.executable,
            str(ROOT / "tools" / "convert.py"),
            str(source),
            str(dest),
            "--model",
            "dit.num_heads=1",
        ]
        proc = subprocess.Popen(convert, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while proc.poll() is None and time.time() < deadline and not dest.exists():
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.2))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        real += 1
        f = SafetensorsFile(source)
        check_convert_folder(dest, {k: read_tensor(f[k]) for k in f})
    print(f"{2 * FORKED_KILLS + real} SIGKILLs in all ({real} of real entry-point processes), "
          f"{time.perf_counter() - t0:.1f} s")  # fmt: skip
