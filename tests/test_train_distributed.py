"""The entry point, as a user runs it: one process vs ``torchrun --nproc_per_node=2`` (gloo, FSDP2) on the same
global batch, a checkpoint of 2 processes resumed by 1, a run killed with SIGKILL and resumed, one-line errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from chronoedit.builders import preflight, register
from chronoedit.checkpoint.safetensors_io import SafetensorsFile, read_tensor
from chronoedit.training.checkpointing import complete_checkpoints
from chronoedit.training.config import TrainConfig
from chronoedit.training.metrics import read_metrics
from chronoedit.training.run import check_inputs
from chronoedit.training.trainer import Trainer
from tests.helpers import rel_err
from tests.test_train_trainer import WORLD, config

ROOT = Path(__file__).resolve().parents[1]
TRAIN = str(ROOT / "train" / "train.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}  # one thread per process, as torchrun sets
TOL = 1e-5  # loss curves and grad norms, relative
# trained weights, all tensors together: Adam divides each gradient element by its running RMS, so an element whose
# gradient is ~0 (e.g. the key biases of attention, whose exact gradient is 0) moves by ±lr on rounding noise that
# another reduction order changes; the loss curves agree to ~1e-8 all the same
WEIGHT_TOL = 1e-3


def weights_rel_err(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert sorted(a) == sorted(b)
    return rel_err(
        torch.cat([b[k].flatten().double() for k in sorted(a)]), torch.cat([a[k].flatten().double() for k in sorted(a)])
    )


BASE = ("experiment=tiny_lora_cpu", "steps=5", "log_every=1", "checkpoints.every=0")


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def train(run_dir: Path, *overrides: str, procs: int = 1, check: bool = True) -> subprocess.CompletedProcess:
    launcher = [sys.executable, TRAIN]
    if procs > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}", TRAIN]
    out = subprocess.run([*launcher, f"run_dir={run_dir}", *overrides], env=ENV, cwd=ROOT, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    if check and out.returncode != 0:
        raise AssertionError(f"training failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out


def tensors(path: Path) -> dict[str, torch.Tensor]:
    f = SafetensorsFile(path)
    return {k: read_tensor(f[k]) for k in f}


def max_rel(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) / abs(x) for x, y in zip(a, b, strict=True))


def curve(run_dir: Path, key: str = "loss") -> list[float]:
    return [r[key] for r in read_metrics(run_dir)]


def one_process(run_dir: Path, *overrides: str) -> None:
    """The same run in this process (no process group, no FSDP)."""
    Trainer(config(*overrides, experiment="tiny_lora_cpu"), run_dir, WORLD).fit()
    Trainer(config(*overrides, "resume=true", experiment="tiny_lora_cpu"), run_dir, WORLD).export()


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_with_fsdp_match_one_process(tmp_path):
    # LoRA: 1 process, one micro-batch of 4 / 2 processes, FSDP2 over both, 2 accumulation steps of 1, AC on
    one_process(tmp_path / "lora1", *BASE[1:], "micro_batch_size=4")
    train(tmp_path / "lora2", *BASE, "micro_batch_size=1", "parallel.activation_checkpointing=true", procs=2)
    loss_err = max_rel(curve(tmp_path / "lora1"), curve(tmp_path / "lora2"))
    norm_err = max_rel(curve(tmp_path / "lora1", "grad_norm"), curve(tmp_path / "lora2", "grad_norm"))
    a, b = tensors(tmp_path / "lora1" / "lora.safetensors"), tensors(tmp_path / "lora2" / "lora.safetensors")
    lora_err = weights_rel_err(a, b)
    print(f"LoRA, 1 vs 2 processes (FSDP2): loss max rel diff {loss_err:.2e}, grad norm {norm_err:.2e}, "
          f"exported LoRA {lora_err:.2e} over {len(a)} tensors")  # fmt: skip
    assert len(curve(tmp_path / "lora2")) == 5
    assert loss_err <= TOL and norm_err <= TOL and lora_err <= WEIGHT_TOL

    # full fine-tuning with EMA: 1 process vs 2 in plain data parallel (shard_size=1: HSDP with 2 replicas) for
    # 3 steps, whose checkpoint 1 process then resumes for steps 4-5 (the checkpoint is resharded on load)
    full = ("mode=full", "ema.enabled=true", "ema.decay=0.9", "optim.lr=3e-3")
    one_process(tmp_path / "full1", *BASE[1:], *full, "micro_batch_size=4")
    train(tmp_path / "full2", *BASE, *full, "steps=3", "micro_batch_size=2", "parallel.shard_size=1", procs=2)
    assert [s for s, _ in complete_checkpoints(tmp_path / "full2")] == [3]
    out = train(tmp_path / "full2", *BASE, *full, "micro_batch_size=4", "resume=true")
    assert "RNG states not restored" in out.stderr + out.stdout  # 2 processes saved them, 1 resumes
    full_err = max_rel(curve(tmp_path / "full1"), curve(tmp_path / "full2"))
    a, b = (
        tensors(tmp_path / "full1" / "export" / "dit.safetensors"),
        tensors(tmp_path / "full2" / "export" / "dit.safetensors"),
    )
    dit_err = weights_rel_err(a, b)
    print(f"full + EMA, 1 process vs 2 (data parallel) resumed by 1: loss max rel diff {full_err:.2e}, "
          f"exported EMA weights {dit_err:.2e}")  # fmt: skip
    assert [r["step"] for r in read_metrics(tmp_path / "full2")] == [1, 2, 3, 4, 5]
    assert full_err <= TOL and dit_err <= WEIGHT_TOL


@pytest.mark.slow
def test_a_killed_run_resumes_bit_identically(tmp_path):
    args = ("experiment=tiny_lora_cpu", "log_every=1", "checkpoints.every=2")
    train(tmp_path / "ref", *args, "steps=12")
    proc = subprocess.Popen([sys.executable, TRAIN, f"run_dir={tmp_path / 'killed'}", *args, "steps=100000"],
                            env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.time() + 120
        while time.time() < deadline and len(read_metrics(tmp_path / "killed")) < 7:
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    logged = len(read_metrics(tmp_path / "killed"))
    last = complete_checkpoints(tmp_path / "killed")[-1][0]
    assert logged >= 7 and last < logged  # killed after steps that were never checkpointed
    train(tmp_path / "killed", *args, "steps=12", "resume=true")
    ref, resumed = read_metrics(tmp_path / "ref"), read_metrics(tmp_path / "killed")
    assert [r["step"] for r in resumed] == list(range(1, 13))
    assert [(r["loss"], r["grad_norm"]) for r in resumed] == [(r["loss"], r["grad_norm"]) for r in ref]
    a, b = tensors(tmp_path / "ref" / "lora.safetensors"), tensors(tmp_path / "killed" / "lora.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    print(f"SIGKILL after step {logged} (last checkpoint {last}): resumed steps {last + 1}-12 bit-identical")


def test_bad_configs_and_missing_data_are_one_line_errors(tmp_path):
    """Checked by the entry point's preflight before any model is built: the first line names the problem."""
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("x")
    cases = {
        "data.cache=/no/such/cache data.synthetic=null": "data.cache=/no/such/cache: no such folder",
        "lora.rnk=4": "Could not override 'lora.rnk'",
        "mode=lora lora.rank=0": "invalid lora config: rank=0 must be >= 1",
        "experiment=lora_14b data.cache=/x": "checkpoint is not set",
        "optim.schedule=linear": "schedule='linear' must be constant or cosine",
        f"run_dir={tmp_path / 'full'}": "is not empty (resume=true to continue it, overwrite=true to restart)",
        f"run_dir={tmp_path / 'new'} resume=true": "holds no complete checkpoint",
    }
    register()
    for args, message in cases.items():
        error = preflight(ROOT / "configs", "train", args.split(), schema=TrainConfig, check=check_inputs)
        assert error is not None and "\n" not in error and message in error, (args, error)
    assert preflight(ROOT / "configs", "train", ["experiment=tiny_lora_cpu"], schema=TrainConfig) is None
    # the entry point prints it as one line and exits with 2, creating nothing
    out = subprocess.run([sys.executable, TRAIN, f"run_dir={tmp_path / 'new'}", "data.cache=/nope", "data.synthetic=null"],
                         env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip() == "error: data.cache=/nope: no such folder"
    assert not (tmp_path / "new").exists()


def test_tiny_experiment_runs_from_the_command_line(tmp_path):
    train(tmp_path / "run", "experiment=tiny_lora_cpu", "debug=fast")
    files = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert files == ["checkpoints", "config.yaml", "lora.safetensors", "metrics.jsonl"]
    records = read_metrics(tmp_path / "run")
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert set(records[0]) >= {"loss", "lr", "grad_norm", "samples_per_s", "tokens_per_s", "step_s"}
    assert json.loads(json.dumps(records))


@pytest.mark.slow
def test_preencode_then_train_from_the_command_line(tmp_path):
    """The user's path: a dataset folder (one corrupt image) -> train/preencode.py -> train/train.py on the cache."""
    from tests.test_train_data import make_dataset

    make_dataset(tmp_path / "data")
    out = subprocess.run(
        [sys.executable, str(ROOT / "train" / "preencode.py"), f"dataset={tmp_path / 'data'}",
         f"output={tmp_path / 'cache'}", "height=32", "width=48", "clip_frames=5"],
        env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["counts"] == {"pair": 3, "video": 1} and summary["skipped"] == 2
    assert out.stdout.count("skipping row") + out.stderr.count("skipping row") == 2
    train(tmp_path / "run", "experiment=tiny_lora_cpu", f"data.cache={tmp_path / 'cache'}", "data.synthetic=null",
          "data.video_ratio=0.5", "steps=4", "batch_size=2", "micro_batch_size=1", "log_every=1")  # fmt: skip
    assert {r["kind"] for r in read_metrics(tmp_path / "run")} == {"pair", "video"}


@pytest.mark.slow
@pytest.mark.distributed
def test_bf16_fsdp_params_give_the_same_losses_on_one_and_two_processes(tmp_path):
    """precision.fsdp_param=bfloat16 (as lora_14b and full_14b ship): FSDP2 computes with bf16 copies of every
    parameter and bf16 inputs; one process has no FSDP and applies the same cast from the outside
    (chronoedit/training/mixed_precision.py). Without it the losses differed from step 1 on (2.8e-4 relative at
    step 1, up to 2e-2 by step 5, on this setup)."""
    bf16 = ("precision.compute=bfloat16", "precision.fsdp_param=bfloat16", "micro_batch_size=1")
    for mode in ("lora", "full"):
        one_process(tmp_path / f"{mode}1", *BASE[1:], *bf16, f"mode={mode}")
        train(tmp_path / f"{mode}2", *BASE, *bf16, f"mode={mode}", procs=2)
        a, b = curve(tmp_path / f"{mode}1"), curve(tmp_path / f"{mode}2")
        print(f"{mode}, bf16 FSDP parameters, 1 vs 2 processes: step 1 rel diff {abs(a[0] - b[0]) / a[0]:.1e}, "
              f"all steps {max_rel(a, b):.1e}")  # fmt: skip
        assert len(a) == len(b) == 5
        assert abs(a[0] - b[0]) <= 1e-6 * abs(a[0])  # step 1: the same forward
        # later steps: the per-sample bf16 gradients are summed in another order (1 process: 4 accumulation
        # steps; 2: 2 each, then reduced), which moves some fp32 master weights by an ulp and so, now and then,
        # their bf16 copy by one bf16 ulp; LoRA's few parameters came out bit-identical here, full fine-tuning 3e-4
        assert max_rel(a, b) <= (TOL if mode == "lora" else 2e-3)
