"""Measure peak host memory when loading a sharded fp32 UMT5 checkpoint into bf16 with ``load_umt5``.

Writes a synthetic ``text_encoder/`` folder (transformers names, real width and vocabulary, ``--layers`` blocks,
fp32, shards of at most ``--shard-mb``) to a temporary directory, loads it in a fresh Python process, and reports
that process's peak RSS (``resource.getrusage``) against the bf16 size of the loaded model. Cleans up after.
Writing and loading each run in their own process, started from this small one that never imports torch:
Linux keeps ``ru_maxrss`` across fork + exec, so a big parent would inflate the loader's figure.

    python tools/measure_umt5_load.py --layers 4 --shard-mb 1024
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GIB = 1024**3


def transformers_shapes(cfg) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a transformers UMT5EncoderModel checkpoint for ``cfg`` (a UMT5Config)."""
    inner = cfg.num_heads * cfg.head_dim
    shapes = {"shared.weight": (cfg.vocab_size, cfg.dim)}
    for n in range(cfg.num_layers):
        b = f"encoder.block.{n}.layer"
        shapes[f"{b}.0.layer_norm.weight"] = (cfg.dim,)
        for p in "qkv":
            shapes[f"{b}.0.SelfAttention.{p}.weight"] = (inner, cfg.dim)
        shapes[f"{b}.0.SelfAttention.o.weight"] = (cfg.dim, inner)
        shapes[f"{b}.0.SelfAttention.relative_attention_bias.weight"] = (cfg.num_buckets, cfg.num_heads)
        shapes[f"{b}.1.layer_norm.weight"] = (cfg.dim,)
        shapes[f"{b}.1.DenseReluDense.wi_0.weight"] = (cfg.ffn_dim, cfg.dim)
        shapes[f"{b}.1.DenseReluDense.wi_1.weight"] = (cfg.ffn_dim, cfg.dim)
        shapes[f"{b}.1.DenseReluDense.wo.weight"] = (cfg.dim, cfg.ffn_dim)
    shapes["encoder.final_layer_norm.weight"] = (cfg.dim,)
    return shapes


def write_checkpoint(folder: Path, layers: int, shard_bytes: int) -> int:
    """The synthetic fp32 folder (config.json, shards, index); returns the bytes of tensor data written."""
    import math

    import torch

    from chronoedit.checkpoint.keymaps.umt5 import config_to_transformers
    from chronoedit.checkpoint.safetensors_io import save_file
    from chronoedit.models.text import UMT5_PRESETS

    cfg = UMT5_PRESETS["umt5_xxl"].replace(num_layers=layers)
    config = {"architectures": ["UMT5EncoderModel"], "model_type": "umt5", **config_to_transformers(cfg)}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    shapes = transformers_shapes(cfg)
    groups: list[list[str]] = [[]]
    size = 0
    for key, shape in shapes.items():  # greedy shards; a tensor larger than a shard gets its own
        nbytes = 4 * math.prod(shape)
        if groups[-1] and size + nbytes > shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(key)
        size += nbytes
    weight_map = {}
    g = torch.Generator().manual_seed(0)
    for i, keys in enumerate(groups):
        name = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {k: torch.empty(shapes[k]).normal_(0, 0.05, generator=g) for k in keys}
        save_file(tensors, folder / name)
        del tensors
        weight_map.update(dict.fromkeys(keys, name))
    total = sum(4 * math.prod(s) for s in shapes.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return total


def child(folder: str, dtype_name: str) -> None:
    """Runs in the fresh process: load, then print sizes and peak RSS as JSON."""
    import torch

    from chronoedit.checkpoint.encoders import load_text_encoder as load_umt5

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # peak so far: interpreter + torch
    t0 = time.perf_counter()
    model = load_umt5(folder, dtype=getattr(torch, dtype_name), device="cpu")
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    params = list(model.parameters()) + list(model.buffers())
    print(
        json.dumps(
            dict(
                model_bytes=sum(p.numel() * p.element_size() for p in params),
                params=sum(p.numel() for p in params),
                fp32_params=sum(p.numel() for p in params if p.dtype == torch.float32),
                baseline_rss=before,
                peak_rss=peak,
                load_seconds=seconds,
            )
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=4, help="encoder blocks at the real width (24 in UMT5-XXL)")
    ap.add_argument("--shard-mb", type=int, default=1024, help="max shard size in MiB")
    ap.add_argument("--dtype", default="bfloat16", help="dtype to load into")
    ap.add_argument("--tmp", default=None, help="parent folder for the temporary checkpoint")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--write", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.dtype)
        return
    if args.write:
        print(write_checkpoint(Path(args.write), args.layers, args.shard_mb * 1024**2))
        return
    tmp = Path(tempfile.mkdtemp(prefix="umt5_load_", dir=args.tmp))
    try:
        t0 = time.perf_counter()
        cmd = [sys.executable, __file__, "--write", str(tmp), "--layers", str(args.layers)]
        cmd += ["--shard-mb", str(args.shard_mb)]
        written = int(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.split()[-1])
        shards = len(list(tmp.glob("*.safetensors")))
        print(f"wrote {written / GIB:.2f} GiB fp32 in {shards} shards ({time.perf_counter() - t0:.0f} s): {tmp}")
        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"this process (never imports torch): peak RSS {own:.0f} MiB")
        cmd = [sys.executable, __file__, "--child", str(tmp), "--dtype", args.dtype]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    model, peak, base = r["model_bytes"], r["peak_rss"], r["baseline_rss"]
    print(f"loaded {r['params'] / 1e9:.3f}B parameters as {args.dtype} ({r['fp32_params']} kept fp32, the norms)")
    print(f"model size in memory      {model / GIB:7.3f} GiB")
    print(f"peak RSS of the loader    {peak / GIB:7.3f} GiB  = {peak / model:.3f} × model")
    print(f"  of which before loading {base / GIB:7.3f} GiB  (interpreter + torch)")
    print(f"  peak − baseline         {(peak - base) / GIB:7.3f} GiB  = {(peak - base) / model:.3f} × model")
    print(f"load time {r['load_seconds']:.1f} s")


if __name__ == "__main__":
    main()
