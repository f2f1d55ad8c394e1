"""Benchmark the VAE decode the pipeline does: 2 latent frames -> 5 video frames at 480×832, real Wan 2.1 config,
ours vs diffusers' AutoencoderKLWan, same random weights, fp32 on CPU.

    python tools/bench_vae.py                          # 3 rounds of: diffusers, ours, diffusers tiled, ours tiled
    python tools/bench_vae.py --rounds 1 --modes untiled --height 240 --width 416

The weights are saved once (diffusers names) to a temporary safetensors file. Each measurement is a fresh
process (``ru_maxrss`` only grows): load the weights (diffusers: ``from_pretrained``; ours: meta model, key map,
lean loader), a small warm-up decode, then one timed decode of the full size. Implementations alternate
within each round. Tiled: 256-pixel tiles overlapping by 64 in both (diffusers' ``enable_tiling()`` defaults).
The table gives median wall time, the pairwise time ratio to diffusers in the same mode, peak RSS and its ratio
to diffusers untiled; the outputs are compared at the end.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import torch  # noqa: E402
from _bench import alternate, emit, peak_rss_mib  # noqa: E402

TILE, OVERLAP = 256, 64  # pixels; diffusers' enable_tiling() defaults: 256-pixel tiles, stride 192


def prepare(args: argparse.Namespace, folder: Path) -> None:
    import diffusers
    from safetensors.torch import save_file

    from chronoedit.checkpoint.keymaps.vae import config_to_diffusers
    from chronoedit.models.vae import VAE_PRESETS
    from tests.helpers import randomize_

    ref = diffusers.AutoencoderKLWan(**config_to_diffusers(VAE_PRESETS["wan21"]))
    randomize_(ref, seed=0)
    ref.save_pretrained(folder / "vae", safe_serialization=True)  # config.json + diffusion_pytorch_model.safetensors
    del ref
    z = torch.randn(1, 16, 2, args.height // 8, args.width // 8, generator=torch.Generator().manual_seed(1))
    save_file({"z": z}, str(folder / "latents.safetensors"))


def worker(impl: str, mode: str, folder: Path, threads: int) -> None:
    from safetensors.torch import load_file, save_file

    torch.set_num_threads(threads)
    z = load_file(str(folder / "latents.safetensors"))["z"]
    t0 = time.perf_counter()
    if impl == "ours":
        from chronoedit.checkpoint.keymaps.vae import DIFFUSERS_TO_OURS, config_from_diffusers
        from chronoedit.checkpoint.load import load_into, open_safetensors
        from chronoedit.models.vae import WanVAE

        config = json.loads((folder / "vae" / "config.json").read_text())
        cfg = config_from_diffusers(config, tile=mode == "tiled", tile_size=TILE, tile_overlap=OVERLAP)
        with torch.device("meta"):
            model = WanVAE(cfg)
        load_into(model, DIFFUSERS_TO_OURS.convert(open_safetensors(folder / "vae")), what="bench VAE")

        def decode(latents: torch.Tensor) -> torch.Tensor:
            return model.decode_raw(latents)
    else:
        import diffusers

        model = diffusers.AutoencoderKLWan.from_pretrained(folder / "vae", torch_dtype=torch.float32)
        if mode == "tiled":
            model.enable_tiling(TILE, TILE, TILE - OVERLAP, TILE - OVERLAP)

        def decode(latents: torch.Tensor) -> torch.Tensor:
            return model.decode(latents, return_dict=False)[0]

    model.eval()
    load_s = time.perf_counter() - t0
    with torch.no_grad():
        decode(z[:, :, :, :4, :4])  # warm-up: thread pools, oneDNN primitives
        t0 = time.perf_counter()
        out = decode(z)
        seconds = time.perf_counter() - t0
    peak = peak_rss_mib()
    save_file({"out": out.contiguous()}, str(folder / f"out_{impl}_{mode}.safetensors"))
    emit({"seconds": seconds, "peak_rss_mib": peak, "load_s": load_s, "shape": list(out.shape)})


def table(results: dict[str, list[dict]]) -> str:
    head = (
        f"{'implementation':>18} | {'median s':>9} | {'time ratio':>10} | {'peak RSS MiB':>12} | "
        f"{'RSS / diffusers':>15} | {'RSS / diffusers, same mode':>26}"
    )
    rows = [head, "-" * len(head)]
    base_rss = statistics.median(r["peak_rss_mib"] for r in results["diffusers"])
    for name, res in results.items():
        ref = results["diffusers tiled" if name.endswith("tiled") else "diffusers"]
        t = [r["seconds"] for r in res]
        ratio = statistics.median(a["seconds"] / b["seconds"] for a, b in zip(res, ref))
        m = statistics.median(r["peak_rss_mib"] for r in res)
        same = m / statistics.median(r["peak_rss_mib"] for r in ref)
        rows.append(
            f"{name:>18} | {statistics.median(t):9.1f} | {ratio:10.3f} | {m:12.0f} | {m / base_rss:15.3f} | {same:26.3f}"
        )
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--height", type=int, default=480, help="video height (multiple of 8)")
    p.add_argument("--width", type=int, default=832, help="video width (multiple of 8)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--modes", default="untiled,tiled", help="comma-separated: untiled, tiled")
    p.add_argument("--worker", choices=["ours", "diffusers"], help=argparse.SUPPRESS)
    p.add_argument("--mode", choices=["untiled", "tiled"], help=argparse.SUPPRESS)
    p.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args.worker, args.mode, args.dir, args.threads)
        return
    modes = args.modes.split(",")
    if "untiled" not in modes:
        raise SystemExit("--modes must include untiled (the RSS reference)")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        prepare(args, folder)
        print(
            f"VAE decode, real Wan 2.1 config, fp32 CPU, {args.threads} threads: 2 latent frames "
            f"{args.height // 8}x{args.width // 8} -> 5 frames {args.height}x{args.width}; one decode per process, "
            f"{args.rounds} rounds",
            flush=True,
        )
        script = str(Path(__file__).resolve())
        workers = {}
        for mode in modes:
            for impl in ("diffusers", "ours"):
                name = impl if mode == "untiled" else f"{impl} tiled"
                workers[name] = [script, "--worker", impl, "--mode", mode, "--dir", str(folder)]
                workers[name] += ["--threads", str(args.threads)]
        results = alternate(workers, args.rounds)
        print(table(results))

        from safetensors.torch import load_file

        from tests.helpers import max_abs, rel_err

        def out(impl: str, mode: str) -> torch.Tensor:
            return load_file(str(folder / f"out_{impl}_{mode}.safetensors"))["out"]

        err = rel_err(out("ours", "untiled"), out("diffusers", "untiled"))
        print(f"untiled: ours vs diffusers relative error {err:.2e}")
        if "tiled" in modes:
            ours_t, ref_t, ours_u = out("ours", "tiled"), out("diffusers", "tiled"), out("ours", "untiled")
            print(
                f"tiled vs untiled max |Δ|: ours {max_abs(ours_t, ours_u):.3f}, "
                f"diffusers {max_abs(ref_t, out('diffusers', 'untiled')):.3f}"
            )


if __name__ == "__main__":
    main()
