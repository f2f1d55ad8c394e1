"""Peak RSS while loading a sharded fp32 DiT checkpoint into a bf16 model.

    python tools/measure_load_rss.py                      # Wan-1.3B-like width, 20 layers: ~4.8 GB of fp32
    python tools/measure_load_rss.py --layers 4 --keep    # smaller; keep the checkpoint for another run
    python tools/measure_load_rss.py --diffusers          # also diffusers' from_pretrained(torch_dtype=bf16)

Writes a synthetic diffusers ``transformer/`` folder (random fp32 values, 1 GB shards, streamed to disk one
tensor at a time), then loads it in a fresh process with ``load_dit(..., dtype=torch.bfloat16)`` and reports
the process's peak RSS against its RSS before loading and the size of the bf16 model. Lean loading means
peak − baseline ≈ the loaded model (plus one tensor), not the fp32 checkpoint and not twice the model.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GIB = 1024**3

WORKER = """
import json, resource, sys, time
sys.path.insert(0, {root!r})
import torch
def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) * 1024
which, folder = sys.argv[1], sys.argv[2]
if which == "diffusers":
    import diffusers
else:
    from chronoedit.checkpoint.dit import load_dit
base = rss()
t = time.perf_counter()
if which == "diffusers":
    model = diffusers.ChronoEditTransformer3DModel.from_pretrained(folder, torch_dtype=torch.bfloat16)
else:
    model = load_dit(folder, dtype=torch.bfloat16)
seconds = time.perf_counter() - t
size = sum(p.numel() * p.element_size() for p in model.parameters())
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print("RESULT " + json.dumps(dict(baseline=base, peak=peak, model=size, after=rss(), seconds=seconds)))
"""


def write_checkpoint(folder: Path, layers: int, shard_gb: float) -> int:
    """A random fp32 diffusers transformer folder; returns its size in bytes."""
    import torch

    from chronoedit.checkpoint.registry import write_diffusers
    from chronoedit.models.dit import ChronoEditDiT, DiTConfig

    # Wan 1.3B width (dim 1536, 12 heads, FFN 8960) with the real text / image encoder widths
    cfg = DiTConfig(dim=1536, num_heads=12, num_layers=layers, ffn_dim=8960, text_dim=4096, image_dim=1280)
    with torch.device("meta"):
        shapes = {k: v for k, v in ChronoEditDiT(cfg).state_dict().items()}
    lazy = {k: LazyRandom(tuple(v.shape), i) for i, (k, v) in enumerate(shapes.items())}
    write_diffusers("dit", cfg, lazy, folder, max_shard_bytes=int(shard_gb * 1e9))
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


class LazyRandom:
    """A tensor that exists only when read: fp32 noise, seeded by its index (TensorLike for the writer)."""

    def __init__(self, shape: tuple[int, ...], seed: int) -> None:
        import torch

        self.shape, self.seed, self.dtype = shape, seed, torch.float32

    def to(self, dtype):
        import torch

        g = torch.Generator().manual_seed(self.seed)
        return (torch.randn(self.shape, generator=g) * 0.02).to(dtype)


def measure(which: str, folder: Path) -> dict:
    code = WORKER.format(root=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", code, which, str(folder)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-4000:])
    line = next(ln for ln in proc.stdout.splitlines()[::-1] if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=20)
    p.add_argument("--shard-gb", type=float, default=1.0)
    p.add_argument("--folder", type=Path, help="where to write the checkpoint (default: a temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the checkpoint folder")
    p.add_argument("--diffusers", action="store_true", help="also measure diffusers' from_pretrained")
    args = p.parse_args(argv)
    folder = args.folder or Path(tempfile.mkdtemp(prefix="rss_dit_")) / "transformer"
    try:
        if not (folder / "config.json").is_file():
            print(f"writing a {args.layers}-layer fp32 checkpoint to {folder} …", flush=True)
            size = write_checkpoint(folder, args.layers, args.shard_gb)
        else:
            size = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
        n_shards = len(list(folder.glob("*.safetensors")))
        print(f"checkpoint: {size / GIB:.2f} GiB fp32 in {n_shards} shards")
        for which in ["ours"] + (["diffusers"] if args.diffusers else []):
            r = measure(which, folder)
            grew = r["peak"] - r["baseline"]
            print(
                f"{which:>9}: bf16 model {r['model'] / GIB:.2f} GiB | RSS before load {r['baseline'] / GIB:.2f} GiB, "
                f"peak {r['peak'] / GIB:.2f} GiB, after {r['after'] / GIB:.2f} GiB | peak − before "
                f"{grew / GIB:.2f} GiB = {grew / r['model']:.2f}× the model | {r['seconds']:.1f} s"
            )
    finally:
        if not args.keep and args.folder is None:
            shutil.rmtree(folder.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
