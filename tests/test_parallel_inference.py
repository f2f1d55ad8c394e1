"""Multi-process inference (chronoedit/parallel) on CPU with gloo: every mesh gives the numbers of one process.

In-process: ``torch.multiprocessing.spawn`` workers join a gloo group and compare (a) the tiny DiT wrapped for each
mesh with the plain DiT on token counts that do not divide by the ranks and a [cond; uncond] batch with different
prompt lengths, (b) whole tiny edits (CFG; reasoning with the drop at step 2 of 4) built by ``build_pipeline``.
A 2-rank mesh is also run inside a 4-process world as dp=2 groups. From the command line: one
``torchrun infer/edit.py`` against one process, and a bad mesh as a one-line error before any weight is read.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from chronoedit.checkpoint.safetensors_io import SafetensorsFile, read_tensor
from chronoedit.models.dit.model import ChronoEditDiT
from chronoedit.models.spec import MODEL_PRESETS
from chronoedit.parallel import ParallelConfig, check_parallel
from chronoedit.parallel.attention import attention_with_lse, blockwise_attention, merge_attention
from chronoedit.parallel.mesh import _subgroups
from chronoedit.pipeline.config import EditConfig, ReasoningConfig
from chronoedit.sampling import SamplerConfig
from tests.helpers import rel_err

ROOT = Path(__file__).resolve().parents[1]
EDIT = str(ROOT / "infer" / "edit.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
TOL = 1e-5  # fp32, relative

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# ---------------------------------------------------------------------------------------------- no processes
def test_bad_meshes_are_one_line_errors():
    check_parallel(ParallelConfig(), 1, 2)
    check_parallel(ParallelConfig(ulysses=2, cfg=2), 4, 2)
    with pytest.raises(ValueError, match=r"= 2 processes, but 1 were started \(torchrun --nproc_per_node=2\)"):
        check_parallel(ParallelConfig(ulysses=2), 1, 2)
    with pytest.raises(ValueError, match=r"parallel\.ulysses=4 does not divide the DiT's 2 attention heads"):
        check_parallel(ParallelConfig(ulysses=4), 4, 2)
    check_parallel(ParallelConfig(ring=4), 4, 2)  # ring: any head count
    with pytest.raises(ValueError, match=r"parallel\.cfg=3 must be 1 or 2"):
        check_parallel(ParallelConfig(cfg=3), 3, 2)
    with pytest.raises(ValueError, match=r"parallel\.ring=0 must be an integer >= 1"):
        check_parallel(ParallelConfig(ring=0), 1, 2)
    with pytest.raises(ValueError, match=r"shard_weights=true needs parallel\.dp=1"):
        check_parallel(ParallelConfig(dp=2, shard_weights=True), 2, 2)


def test_mesh_layout_puts_ulysses_innermost():
    pc = ParallelConfig(ulysses=2, ring=2, cfg=2)
    assert _subgroups(pc, "u") == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert _subgroups(pc, "r") == [[0, 2], [1, 3], [4, 6], [5, 7]]
    assert _subgroups(pc, "ru") == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert _subgroups(pc, "c") == [[0, 4], [1, 5], [2, 6], [3, 7]]


def test_blockwise_attention_merged_equals_whole_attention():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 5, 3, 8, generator=g) for _ in range(3))
    k, v = torch.cat([k, 3 * k[:, :2]], 1), torch.cat([v, v[:, :2]], 1)  # 7 keys, split 3 + 4
    out, lse = None, None
    for part in (slice(0, 3), slice(3, 7)):
        out, lse = merge_attention(out, lse, *attention_with_lse(q, k[:, part], v[:, part]))
    ref = torch.nn.functional.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v))).transpose(1, 2)
    assert rel_err(out, ref) < 1e-6
    chunked, lse_chunked = blockwise_attention(q, k, v, q_chunk=2, k_chunk=3)  # 5 queries, 7 keys: ragged chunks
    assert rel_err(chunked, ref) < 1e-6 and rel_err(lse_chunked, lse) < 1e-6


def test_a_bad_mesh_on_the_command_line_exits_2_before_any_weight(tmp_path):
    out = subprocess.run([sys.executable, EDIT, "preset=tiny", "parallel.ulysses=2", f"output_dir={tmp_path / 'o'}"], env=ENV,
                         cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().count("\n") == 0 and "2 processes, but 1 were started" in out.stderr
    assert "checkpoint:" not in out.stdout  # nothing was loaded


# ---------------------------------------------------------------------------------------------- gloo workers
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tiny_dit() -> ChronoEditDiT:
    return ChronoEditDiT(MODEL_PRESETS["tiny"].dit).init_weights(torch.Generator().manual_seed(0)).eval()


def _dit_inputs(frames: int, batch: int = 2) -> tuple:
    """x (B, 36, F, 6, 6) -> 9 tokens per frame; a [cond; uncond]-like batch with prompt lengths 7 and 3."""
    cfg = MODEL_PRESETS["tiny"].dit
    g = torch.Generator().manual_seed(frames)
    x = torch.randn(batch, cfg.in_channels, frames, 6, 6, generator=g)
    t = torch.tensor([700.0] * batch)
    context = torch.randn(batch, 7, cfg.text_dim, generator=g)
    context[1:, 3:] = 0
    clip = torch.randn(batch, 5, cfg.image_dim, generator=g)
    return x, t, context, clip, torch.tensor([7, 3][:batch])


def _dit_parity(meshes: list[ParallelConfig]) -> list[str]:
    """Every mesh's wrapped tiny DiT against the plain one: 27 tokens (odd) and 18, batch 2 and 1."""
    from chronoedit.parallel.apply import parallelize_pipeline

    lines = []
    for pc in meshes:
        for frames, batch in ((3, 2), (2, 2), (2, 1)):
            inputs = _dit_inputs(frames, batch)
            with torch.no_grad():
                ref = _tiny_dit()(*inputs)
                pipe = _FakePipe(_tiny_dit())
                out = parallelize_pipeline(pipe, pc).c.dit(*inputs)
            err = rel_err(out, ref)
            lines.append(f"dit {pc} frames={frames} batch={batch}: {err:.2e}")
            assert err <= TOL, lines[-1]
    return lines


@dataclasses.dataclass
class _FakeComponents:
    dit: ChronoEditDiT


class _FakePipe:
    """What :func:`parallelize_pipeline` touches of an EditPipeline."""

    def __init__(self, dit: ChronoEditDiT) -> None:
        self.c, self.device, self.cfg_batched, self.progress = _FakeComponents(dit), torch.device("cpu"), False, False


def _edit_config(pc: ParallelConfig, reasoning: int) -> EditConfig:
    return EditConfig(
        sampler=SamplerConfig(steps=4),
        height=32,
        width=48,  # 2·2·3 = 12 tokens per latent frame
        reasoning=ReasoningConfig(steps=reasoning),
        runtime=dataclasses.replace(EditConfig().runtime, device="cpu"),
        parallel=pc,
    )


def _edit_parity(meshes: list[ParallelConfig]) -> list[str]:
    """Whole tiny edits (CFG 5; plain, and reasoning dropped at step 2 of 4) on each mesh vs one process."""
    from chronoedit.pipeline.job import build_pipeline, plan_jobs

    lines = []
    for reasoning in (0, 2):
        ref_cfg = _edit_config(ParallelConfig(), reasoning)
        ref_pipe = build_pipeline(ref_cfg)
        ref_pipe.progress = False
        ref = ref_pipe(plan_jobs(ref_cfg)[0].request, ref_cfg.sampler)
        for pc in meshes:
            cfg = _edit_config(pc, reasoning)
            pipe = build_pipeline(cfg)
            pipe.progress = False
            res = pipe(plan_jobs(cfg)[0].request, cfg.sampler)
            assert res.dropped_at == ref.dropped_at and res.latents.shape == ref.latents.shape
            err = rel_err(res.latents, ref.latents)
            lines.append(f"edit {pc} reasoning={reasoning} latents {tuple(res.latents.shape)}: {err:.2e}")
            assert err <= TOL, lines[-1]
    return lines


def _worker(rank: int, world: int, port: int, meshes: list[ParallelConfig], edits: bool, report: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    os.environ["LOCAL_RANK"] = str(rank)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        lines = _dit_parity(meshes) + (_edit_parity(meshes) if edits else [])
        if rank == 0:
            Path(report).write_text("\n".join(lines))
    finally:
        dist.destroy_process_group()


def _spawn(world: int, meshes: list[ParallelConfig], tmp_path: Path, edits: bool = True) -> list[str]:
    report = tmp_path / "report.txt"
    mp.spawn(_worker, args=(world, _free_port(), meshes, edits, str(report)), nprocs=world, join=True)
    lines = report.read_text().splitlines()
    print("\n".join(lines))  # pytest -s: the relative errors
    return lines


@pytest.mark.distributed
def test_two_ranks_ulysses_ring_cfg_and_sharded_weights_match_one_process(tmp_path):
    meshes = [
        ParallelConfig(ulysses=2),
        ParallelConfig(ring=2),
        ParallelConfig(cfg=2),
        ParallelConfig(ulysses=2, shard_weights=True),
    ]
    lines = _spawn(2, meshes, tmp_path)
    assert len(lines) == 4 * 3 + 2 * 4, lines


@pytest.mark.slow
@pytest.mark.distributed
def test_four_ranks_ulysses_cfg_usp_and_ring_match_one_process(tmp_path):
    meshes = [
        ParallelConfig(ulysses=2, cfg=2),  # the acceptance mesh
        ParallelConfig(ulysses=2, ring=2),  # USP: all-to-all inside ring blocks; 18 tokens -> padded to 20
        ParallelConfig(ring=4),  # heads (2) do not divide by 4: ring only
        ParallelConfig(ring=2, cfg=2, shard_weights=True),
        ParallelConfig(ulysses=2, dp=2),  # a 2-rank mesh twice in a 4-process world
    ]
    lines = _spawn(4, meshes, tmp_path)
    assert len(lines) == 5 * 3 + 2 * 5, lines


# ---------------------------------------------------------------------------------------------- torchrun
def _edit(out: Path, *overrides: str, procs: int = 1) -> None:
    launcher = [sys.executable, EDIT]
    if procs > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}", EDIT]
    args = [
        "preset=tiny",
        "sampler.steps=4",
        "height=32",
        "width=32",
        "runtime.device=cpu",
        "save_latents=true",
        f"output_dir={out}",
    ]
    res = subprocess.run([*launcher, *args, *overrides], env=ENV, cwd=ROOT, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert res.returncode == 0, f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}"


def _latents(folder: Path) -> torch.Tensor:
    return read_tensor(SafetensorsFile(folder / "latents.safetensors")["latents"])


@pytest.mark.slow
@pytest.mark.distributed
def test_torchrun_reasoning_edit_on_two_ranks_matches_one_process(tmp_path):
    _edit(tmp_path / "one", "reasoning.steps=2")
    _edit(tmp_path / "two", "reasoning.steps=2", "parallel.ulysses=2", procs=2)
    assert rel_err(_latents(tmp_path / "two"), _latents(tmp_path / "one")) <= TOL
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["dropped_at_step"] == 2
