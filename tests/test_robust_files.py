"""Hostile and broken files: safetensors headers that lie, broken pickles, unknown quantisation, a seeded fuzz of
both formats through the public loaders (every outcome a CheckpointError or a load; memory bounded; no hang); the
output helpers (location check, atomic writes, the lock); JSON errors that say where."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml

from chronoedit.checkpoint.dit import load_dit
from chronoedit.checkpoint.errors import CheckpointError
from chronoedit.checkpoint.pickle_io import load_pickle, load_pickled_tensors
from chronoedit.checkpoint.safetensors_io import SafetensorsFile, save_file
from chronoedit.files import (
    OutputError,
    atomic_dir,
    atomic_path,
    check_output_location,
    claim_output_dir,
    lock_file_for,
    lock_output,
    parse_position,
    read_jsonl,
)
from chronoedit.models.dit import ChronoEditDiT
from chronoedit.models.dit.config import DIT_PRESETS

ROOT = Path(__file__).resolve().parents[1]
TINY = DIT_PRESETS["tiny"]


def tiny_state(seed: int = 0) -> dict[str, torch.Tensor]:
    return ChronoEditDiT(TINY).init_weights(torch.Generator().manual_seed(seed)).state_dict()


def raw_safetensors(path: Path, header: dict, data: bytes = b"", length: int | None = None) -> Path:
    """A safetensors file written by hand: ``length`` (default: the true one) + JSON header + data."""
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


def one_line_error(fn, *args, **kwargs) -> str:
    with pytest.raises(CheckpointError) as e:
        fn(*args, **kwargs)
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


# ---------------------------------------------------------------------------------------------- lying headers


def test_safetensors_headers_that_lie_are_one_line_errors(tmp_path):
    f32 = {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}
    data = bytes(32)
    cases = {
        "past_end": ({"a": {**f32, "data_offsets": [16, 48]}}, data, None, "truncated file: tensor 'a'"),
        "overlap": ({"a": f32, "b": {**f32, "data_offsets": [8, 24]}}, data, None, "'a' and 'b' overlap"),
        "huge_length": ({"a": f32}, data, 2**60, "corrupt safetensors header (1152921504606846976 bytes claimed"),
        "length_past_end": ({"a": f32}, data, 10_000, "truncated safetensors header"),
        "bad_dtype": ({"a": {**f32, "dtype": "F31"}}, data, None, "unknown dtype 'F31'"),
        "overflow": ({"a": {**f32, "shape": [2**40, 2**40, 2**40]}}, data, None, "whose size overflows"),
        "span_mismatch": ({"a": {**f32, "shape": [2, 3]}}, data, None, "needs 24 bytes, its data_offsets [0, 16)"),
        "reversed": ({"a": {**f32, "data_offsets": [16, 0]}}, data, None, "corrupt file: tensor 'a'"),
        "negative_shape": ({"a": {**f32, "shape": [-2, -2]}}, data, None, "invalid shape"),
        "float_shape": ({"a": {**f32, "shape": [2.0, 2]}}, data, None, "invalid shape"),
        "missing_field": ({"a": {"dtype": "F32", "shape": [4]}}, data, None, "corrupt header entry for 'a'"),
        "not_object": ([1, 2, 3], data, None, "a JSON list, not an object"),
        "bad_metadata": ({"__metadata__": {"x": 1}, "a": f32}, data, None, "corrupt safetensors __metadata__"),
    }
    for name, (header, body, length, expected) in cases.items():
        path = raw_safetensors(tmp_path / f"{name}.safetensors", header, body, length)
        msg = one_line_error(SafetensorsFile, path)
        assert str(path) in msg and expected in msg, (name, msg)
        one_line_error(load_dit, path, config=TINY)  # the public loader says the same
    # a duplicate key, absurd nesting, not UTF-8, GGUF and zip files under the wrong name
    dup = tmp_path / "dup.safetensors"
    raw = b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "a": {"dtype": "F32", "shape": [1], ' \
          b'"data_offsets": [0, 4]}}'  # fmt: skip
    dup.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(4))
    assert "duplicate key 'a'" in one_line_error(SafetensorsFile, dup)
    deep = tmp_path / "deep.safetensors"
    deep.write_bytes(struct.pack("<Q", 200_000) + b"[" * 200_000)
    assert "cannot read safetensors header" in one_line_error(SafetensorsFile, deep)
    latin = tmp_path / "latin.safetensors"
    latin.write_bytes(struct.pack("<Q", 4) + b'"\xe9"' + b"  ")
    assert "cannot read safetensors header" in one_line_error(SafetensorsFile, latin)
    gguf = tmp_path / "model.safetensors"
    gguf.write_bytes(b"GGUF\x03\x00\x00\x00" + bytes(64))
    assert "a GGUF file" in one_line_error(load_dit, gguf, config=TINY)
    (tmp_path / "model.gguf").write_bytes(gguf.read_bytes())
    assert "GGUF files" in one_line_error(load_dit, tmp_path / "model.gguf", config=TINY)
    torch.save({"a": torch.zeros(2)}, tmp_path / "zip.safetensors")
    assert "a PyTorch (zip) pickle" in one_line_error(SafetensorsFile, tmp_path / "zip.safetensors")


def test_unknown_quantisation_is_a_one_line_error(tmp_path):
    sd = {f"model.diffusion_model.{k}": v for k, v in tiny_state().items()}
    key = "model.diffusion_model.blocks.0.self_attn.q"
    sd[f"{key}.weight"] = sd[f"{key}.weight"].to(torch.float8_e4m3fn)
    sd[f"{key}.weight_scale"] = torch.ones(())
    sd[f"{key}.comfy_quant"] = torch.tensor(list(json.dumps({"format": "int4_awq"}).encode()), dtype=torch.uint8)
    save_file(sd, tmp_path / "q.safetensors")
    msg = one_line_error(load_dit, tmp_path / "q.safetensors", config=TINY)
    assert "q.safetensors" in msg and "unsupported quantisation formats" in msg and "int4_awq" in msg
    del sd[f"{key}.comfy_quant"]
    meta = {"_quantization_metadata": json.dumps({"layers": {"blocks.0.self_attn.q": {"format": "nvfp4"}}})}
    save_file(sd, tmp_path / "m.safetensors", metadata=meta)
    assert "nvfp4" in one_line_error(load_dit, tmp_path / "m.safetensors", config=TINY)


def test_broken_pickles_are_one_line_errors(tmp_path):
    torch.save(tiny_state(), tmp_path / "ok.pth")
    data = (tmp_path / "ok.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 3])
    (tmp_path / "flip.pth").write_bytes(data[:-40] + bytes(b ^ 0xFF for b in data[-40:]))  # the zip directory
    (tmp_path / "empty.pth").write_bytes(b"")
    torch.save([torch.zeros(2)], tmp_path / "list.pth")
    for name in ("cut", "flip", "empty"):
        msg = one_line_error(load_pickle, tmp_path / f"{name}.pth")
        assert f"{name}.pth: cannot be loaded with torch.load(weights_only=True)" in msg, msg
        one_line_error(load_dit, tmp_path / f"{name}.pth", config=TINY)
    assert "expected a mapping of names to tensors" in one_line_error(load_pickled_tensors, tmp_path / "list.pth")
    assert sorted(load_pickled_tensors(tmp_path / "ok.pth")) == sorted(tiny_state())


# ---------------------------------------------------------------------------------------------- the fuzz

FUZZ_CASES = 200  # per format
MEMORY_FACTOR = 8  # address space a load may add, in file sizes (plus a fixed 16 MiB for the allocator)


def _mutations(data: bytes, kind: str, rng) -> bytes:
    """One seeded corruption of a safetensors ("st") or zip-pickle ("pth") file."""
    b = bytearray(data)
    choice = rng.choice(["truncate", "flip", "flip", "span", "length", "header", "header"] if kind == "st" else
                        ["truncate", "flip", "flip", "flip_pickle", "span", "tail"])  # fmt: skip
    if choice == "truncate":
        return bytes(b[: rng.randrange(len(b))])
    if choice == "flip":
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    elif choice == "span":
        at = rng.randrange(len(b))
        b[at : at + rng.randint(1, 64)] = bytes(rng.randrange(256) for _ in range(64))[: len(b) - at]
    elif choice == "length":
        n = struct.unpack("<Q", b[:8])[0]
        b[:8] = struct.pack("<Q", rng.choice([0, 1, n - 1, n + 1, n + 8, 2**60, 2**64 - 1, rng.randrange(2**32)]))
    elif choice == "header":
        (n,) = struct.unpack("<Q", b[:8])
        header = json.loads(b[8 : 8 + n])
        key = rng.choice([k for k in header if k != "__metadata__"])
        field = rng.choice(["dtype", "shape", "data_offsets", "drop"])
        entry = header[key]
        if field == "dtype":
            entry["dtype"] = rng.choice(["F16", "BF16", "F64", "I8", "U8", "BOOL", "F31", "Q4_K", "", 7])
        elif field == "shape":
            entry["shape"] = rng.choice([[], [0], [2**62, 4], [-1], [1.5], [entry["shape"][0] * 2 if entry["shape"]
                                        else 2], [*entry["shape"], 2], "16", [2**31] * 3])  # fmt: skip
        elif field == "data_offsets":
            lo, hi = entry["data_offsets"]
            entry["data_offsets"] = rng.choice([[0, hi - lo], [lo, hi + 4], [lo - 4, hi - 4] if lo >= 4 else [0, 0],
                                                [lo, 2**62], [hi, lo], [lo], [lo, hi, 1]])  # fmt: skip
        else:
            del header[key]
        raw = json.dumps(header).encode()
        return struct.pack("<Q", len(raw)) + raw + bytes(b[8 + n :])
    elif choice == "flip_pickle":
        start = data.find(b"data.pkl") + 8  # the pickle follows its local header's name
        for _ in range(rng.randint(1, 3)):
            at = start + rng.randrange(min(2000, len(b) - start))
            b[at] ^= 1 << rng.randrange(8)
    elif choice == "tail":  # the zip's central directory
        for _ in range(rng.randint(1, 3)):
            b[len(b) - 1 - rng.randrange(min(400, len(b)))] ^= 1 << rng.randrange(8)
    return bytes(b)


def fuzz_worker(folder: str, cases: int, seed: int) -> None:
    """Run in a fresh process: load every corruption through load_dit with the address space limited to what the
    first clean load needed plus MEMORY_FACTOR × the file size, each with a 10 s alarm; print the counts."""
    import random
    import resource

    torch.set_num_threads(1)
    folder = Path(folder)
    ref = tiny_state(seed)
    save_file(ref, folder / "dit.safetensors")
    torch.save(ref, folder / "dit.pth")
    files = {"st": folder / "dit.safetensors", "pth": folder / "dit.pth"}
    clean = {k: p.read_bytes() for k, p in files.items()}
    for p in files.values():  # warm-up (and a check that the clean files load identically)
        got = load_dit(p, dtype=torch.float32, config=TINY).state_dict()
        assert all(torch.equal(got[k], ref[k]) for k in ref)
    size = max(len(d) for d in clean.values())
    vm = int(Path("/proc/self/status").read_text().split("VmSize:")[1].split()[0]) * 1024
    limit = vm + MEMORY_FACTOR * size + (16 << 20)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    def alarm(*_):
        raise TimeoutError

    signal.signal(signal.SIGALRM, alarm)
    counts: dict[str, dict[str, int]] = {}
    examples: list[str] = []
    rng = random.Random(seed)
    for kind, path in files.items():
        c = counts[kind] = {"CheckpointError": 0, "loaded identically": 0, "loaded, data differs": 0, "other": 0}
        target = path.with_name("fuzz" + path.suffix)
        for i in range(cases):
            target.write_bytes(_mutations(clean[kind], kind, rng))
            signal.alarm(10)
            try:
                got = load_dit(target, dtype=torch.float32, config=TINY).state_dict()
                same = sorted(got) == sorted(ref) and all(torch.equal(got[k], ref[k]) for k in ref)
                c["loaded identically" if same else "loaded, data differs"] += 1
            except CheckpointError as e:
                cause = e.__cause__
                if (
                    isinstance(cause, MemoryError)
                    or "allocate" in str(e)
                    or "\n" in str(e)
                    or str(target) not in str(e)
                ):
                    c["other"] += 1
                    examples.append(f"{kind} #{i}: {str(e)[:300]!r}")
                else:
                    c["CheckpointError"] += 1
            except BaseException as e:  # every other outcome is a failure to report
                c["other"] += 1
                examples.append(f"{kind} #{i}: {type(e).__name__}: {str(e)[:300]}")
            finally:
                signal.alarm(0)
    print(json.dumps({"counts": counts, "examples": examples, "file_bytes": size, "limit_over_vm": limit - vm}))


def test_fuzzed_checkpoints_fail_cleanly_or_load(tmp_path):
    code = f"from tests.test_robust_files import fuzz_worker; fuzz_worker({str(tmp_path)!r}, {FUZZ_CASES}, 1234)"
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=240,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    counts = report["counts"]
    print(f"fuzz ({time.perf_counter() - t0:.1f} s, files of {report['file_bytes']} B, address space limited to "
          f"+{report['limit_over_vm'] / 2**20:.1f} MiB): {json.dumps(counts)}")  # fmt: skip
    assert not report["examples"], "\n".join(report["examples"][:20])
    for kind, c in counts.items():
        assert sum(c.values()) == FUZZ_CASES and c["other"] == 0, (kind, c)
        assert c["CheckpointError"] > FUZZ_CASES // 2, (kind, c)  # most corruptions are caught, not loaded


# ---------------------------------------------------------------------------------------------- output helpers


@pytest.fixture
def immutable(tmp_path):
    """A folder that root cannot write into either (``chattr +i``; a read-only file system such as /sys if the
    file system has no such attribute)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    ok = subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0
    if not ok:
        yield Path("/sys/kernel")
        return
    yield folder
    subprocess.run(["chattr", "-i", str(folder)], check=False)


def test_output_location_cases(tmp_path, immutable):
    (tmp_path / "file").write_text("x")
    cases = {
        tmp_path / "file": "exists and is not a folder",
        tmp_path / "file" / "sub": "is under",
        immutable: "is not writable",
        immutable / "sub" / "deeper": "is not writable",
    }
    for path, cause in cases.items():
        with pytest.raises(OutputError, match=cause) as e:
            check_output_location(path, what="output_dir")
        assert str(path) in str(e.value) and "\n" not in str(e.value)
    check_output_location(tmp_path / "new" / "deeper")  # fine, and nothing is created
    assert not (tmp_path / "new").exists()
    with pytest.raises(OutputError, match="not enough free space"):
        check_output_location(tmp_path / "new", need_bytes=1 << 62)
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    with pytest.raises(OutputError, match="broken symbolic link"):
        check_output_location(tmp_path / "dangling")


def test_atomic_writes_leave_nothing_half_written(tmp_path):
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]
    with atomic_path(target) as tmp:
        assert tmp.name == "a.bin.tmp" and target.read_bytes() == b"old"
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]
    frames = tmp_path / "frames"
    with atomic_dir(frames) as tmp:
        (tmp / "0000.png").write_bytes(b"1")
        assert not frames.exists()
    with pytest.raises(RuntimeError), atomic_dir(frames) as tmp:
        (tmp / "0000.png").write_bytes(b"2")
        raise RuntimeError
    assert (frames / "0000.png").read_bytes() == b"1" and sorted(p.name for p in tmp_path.iterdir()) == [
        "a.bin",
        "frames",
    ]


HOLD = textwrap.dedent("""
    import sys, time
    from chronoedit.files import lock_output
    lock_output(sys.argv[1])
    print("locked", flush=True)
    time.sleep(60)
""")


def test_output_lock_is_exclusive_and_released_even_on_sigkill(tmp_path):
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputError, match=rf"in use by pid {holder.pid} \(lock file .*\.out\.lock\)"):
            lock_output(out, what="output_dir")
        with pytest.raises(OutputError, match="in use by"):
            claim_output_dir(out, overwrite=True)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    lock = lock_output(out)  # the kernel released the dead holder's lock; its stale file is reused
    assert lock_output(out) is lock and lock_file_for(out).read_text().strip() == str(os.getpid())
    lock.release()
    assert not lock_file_for(out).exists()
    claim = claim_output_dir(out)
    assert not out.exists() and lock_file_for(out).is_file()  # nothing in or of the folder itself
    claim.release()
    out.mkdir()
    (out / "x").write_text("x")
    with pytest.raises(OutputError, match="not empty"):
        claim_output_dir(out)


# ---------------------------------------------------------------------------------------------- JSON errors


def test_json_errors_name_line_and_column(tmp_path):
    from chronoedit.pipeline.job import _read_batch
    from chronoedit.training.preencode import read_metadata

    (tmp_path / "batch.jsonl").write_text(
        '{"image": "a.png", "prompt": "x"}\n\n{"image": "b.png", "prompt": "unterminated}\n'
    )
    with pytest.raises(ValueError, match=r"batch\.jsonl:3:30: invalid JSON \(Unterminated string starting at\)"):
        _read_batch(str(tmp_path / "batch.jsonl"))
    (tmp_path / "metadata.jsonl").write_text('{"input": "a.png", "output": "b.png", "prompt": "x",}\n')
    with pytest.raises(ValueError, match=r"metadata\.jsonl:1:53: invalid JSON \(Expecting property name"):
        read_metadata(tmp_path)
    (tmp_path / "ok.jsonl").write_text('{"a": 1}\n\n[2]\n')
    assert list(read_jsonl(tmp_path / "ok.jsonl")) == [(1, {"a": 1}), (3, [2])]
    (tmp_path / "meta.json").write_text('{"height": 32,\n "width": }')
    with pytest.raises(json.JSONDecodeError) as e:
        json.loads((tmp_path / "meta.json").read_text())
    assert parse_position(e.value) == "line 2 column 11: Expecting value"
    with pytest.raises(yaml.YAMLError) as e:
        yaml.safe_load("format: chronoedit\ncomponents: [dit\nvae: 1\n")
    assert parse_position(e.value).startswith("line 3 column 4: ") and "\n" not in parse_position(e.value)
