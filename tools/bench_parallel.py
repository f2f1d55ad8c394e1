"""The same edit on 1 process and on N (torchrun; gloo on CPU, NCCL on CUDA): seconds per denoising step, speed-up,
peak memory of the denoise stage on every rank.

    python tools/bench_parallel.py                                   # defaults below, meshes ulysses=2 ring=2 cfg=2
    python tools/bench_parallel.py --meshes ulysses=2 ulysses=2,cfg=2 -- height=256 width=256 reasoning.steps=50

Each run is a fresh process group (``--worker`` mode, one warm-up edit then a timed one). Every process gets
``--threads`` intra-op threads (default 1: N processes use N cores, as N GPUs would; ``--threads 0`` shares the
machine's cores out, ``cores // N`` each). Everything after ``--`` is an ``infer/edit.py`` override.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# a DiT big enough for the blocks to dominate (random weights), a 2-latent-frame edit with CFG
DEFAULT_OVERRIDES = [
    "model.dit.dim=256",
    "model.dit.num_heads=4",
    "model.dit.num_layers=4",
    "model.dit.ffn_dim=1024",
    "height=128",
    "width=128",
    "sampler.steps=4",
    "runtime.device=cpu",
]


def worker(overrides: list[str]) -> None:
    import torch.distributed as dist

    from chronoedit.builders import compose_config
    from chronoedit.parallel.apply import leave_processes
    from chronoedit.pipeline.config import EditConfig
    from chronoedit.pipeline.job import build_pipeline, plan_jobs

    cfg, model_overrides = compose_config(ROOT / "configs", "edit", overrides, EditConfig)
    pipe = build_pipeline(cfg, model_overrides=model_overrides)
    pipe.progress = False
    request = plan_jobs(cfg)[0].request
    pipe(request, cfg.sampler)  # warm-up
    start = time.perf_counter()
    result = pipe(request, cfg.sampler)
    total = time.perf_counter() - start
    denoise = next(s for s in result.profile.stages if s.name == "denoise")
    mine = {"step_s": denoise.seconds / cfg.sampler.steps, "peak_mib": denoise.peak_mib, "edit_s": total}
    ranks = [mine]
    if dist.is_initialized():
        ranks = [None] * dist.get_world_size()
        dist.all_gather_object(ranks, mine)
    if not dist.is_initialized() or dist.get_rank() == 0:
        print("RESULT " + json.dumps({"ranks": ranks, "tokens": int(result.latents[0, 0].numel() // 4)}), flush=True)
    leave_processes()


def launch(procs: int, mesh: dict[str, str], overrides: list[str], threads: int) -> dict:
    threads = threads or max(1, (os.cpu_count() or 1) // procs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    args = [*overrides, *(f"parallel.{k}={v}" for k, v in mesh.items())]
    me = [str(Path(__file__).resolve()), "--worker", "--", *args]
    if procs > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"]
    else:
        launcher = [sys.executable]
    proc = subprocess.run([*launcher, *me], capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"error: {mesh or 'one process'} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return {**json.loads(line[len("RESULT ") :]), "threads": threads}


def parse_mesh(text: str) -> dict[str, str]:
    mesh = dict(kv.split("=", 1) for kv in text.split(","))
    unknown = set(mesh) - {"ulysses", "ring", "cfg", "dp", "shard_weights"}
    if unknown:
        raise SystemExit(f"error: unknown mesh keys {sorted(unknown)} in {text!r}")
    return mesh


def procs_of(mesh: dict[str, str]) -> int:
    n = 1
    for k in ("ulysses", "ring", "cfg", "dp"):
        n *= int(mesh.get(k, 1))
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--meshes", nargs="+", default=["ulysses=2", "ring=2", "cfg=2"], help="k=v[,k=v] per run")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads per process (0: cores // N)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("overrides", nargs="*", help="infer/edit.py overrides (after --)")
    a = ap.parse_args()
    overrides = a.overrides or DEFAULT_OVERRIDES
    if a.worker:
        worker(overrides)
        return
    print(f"overrides: {' '.join(overrides)}  ({os.cpu_count()} cores)")
    base = launch(1, {}, overrides, a.threads)
    ref = base["ranks"][0]["step_s"]
    rows = [("1 process", 1, base)]
    for m in a.meshes:
        mesh = parse_mesh(m)
        rows.append((m, procs_of(mesh), launch(procs_of(mesh), mesh, overrides, a.threads)))
    print(f"video tokens: {base['tokens']}\n")
    print("| mesh | processes × threads | s / step | speed-up | peak MiB per rank (denoise) |")
    print("|---|---|---|---|---|")
    for name, procs, res in rows:
        step = max(r["step_s"] for r in res["ranks"])
        peaks = " / ".join(f"{r['peak_mib']:.0f}" for r in res["ranks"])
        print(f"| {name} | {procs} × {res['threads']} | {step:.3f} | {ref / step:.2f} | {peaks} |")


if __name__ == "__main__":
    main()
