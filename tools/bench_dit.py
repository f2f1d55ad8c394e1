"""Benchmark one DiT forward: ours vs diffusers' ChronoEditTransformer3DModel, same weights, same inputs.

    python tools/bench_dit.py                       # mid-size config on CPU, fp32, 3 alternating rounds
    python tools/bench_dit.py --rounds 5 --layers 4 --height 40 --width 72

Each implementation runs in its own process (so peak RSS is its own): load the shared weights, one warm-up
forward, then the median of ``--iters`` timed forwards. The outputs are compared (relative error) so the
speed is at equal output. Prints a table with the median time, the pairwise time ratio and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import torch  # noqa: E402
from _bench import alternate, emit, peak_rss_mib, summarize  # noqa: E402


def mid_config(args):
    from chronoedit.models.dit import DiTConfig

    # Wan 1.3B width (dim 1536, 12 heads, FFN 8960) with the real text / image encoder widths.
    return DiTConfig(dim=1536, num_heads=12, num_layers=args.layers, ffn_dim=8960, text_dim=4096, image_dim=1280)


def prepare(args, folder: Path) -> None:
    import diffusers
    from safetensors.torch import save_file

    from chronoedit.checkpoint.keymaps.dit import config_to_diffusers
    from tests.helpers import randomize_

    cfg = mid_config(args)
    ref = diffusers.ChronoEditTransformer3DModel(**config_to_diffusers(cfg))
    randomize_(ref, seed=0)
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(folder / "weights.safetensors"))
    (folder / "config.json").write_text(json.dumps(config_to_diffusers(cfg)))
    g = torch.Generator().manual_seed(1)
    real_tokens = 120  # a typical prompt; the rest of the 512 is zero padding, as the pipeline sends it
    context = torch.zeros(1, 512, cfg.text_dim)
    context[:, :real_tokens] = torch.randn(1, real_tokens, cfg.text_dim, generator=g)
    save_file(
        {
            "x": torch.randn(1, cfg.in_channels, 2, args.height, args.width, generator=g),
            "t": torch.tensor([937.0]),
            "context": context,
            "clip": torch.randn(1, 257, cfg.image_dim, generator=g),
            "lens": torch.tensor([real_tokens]),
        },
        str(folder / "inputs.safetensors"),
    )


def worker(impl: str, folder: Path, iters: int, threads: int) -> None:
    from safetensors.torch import load_file

    torch.set_num_threads(threads)
    config = json.loads((folder / "config.json").read_text())
    inputs = load_file(str(folder / "inputs.safetensors"))
    weights = load_file(str(folder / "weights.safetensors"))
    if impl == "ours":
        from chronoedit.checkpoint.keymaps.dit import DIFFUSERS_TO_OURS, config_from_diffusers
        from chronoedit.checkpoint.load import load_into
        from chronoedit.models.dit import ChronoEditDiT

        with torch.device("meta"):
            model = ChronoEditDiT(config_from_diffusers(config))
        load_into(model, DIFFUSERS_TO_OURS.convert(weights))

        def forward():  # the same zero-padded context, plus the prompt length the pipeline knows
            return model(inputs["x"], inputs["t"], inputs["context"], inputs["clip"], inputs["lens"])
    else:
        import diffusers

        model = diffusers.ChronoEditTransformer3DModel(**config)
        model.load_state_dict(weights)

        def forward():
            return model(inputs["x"], inputs["t"], inputs["context"], inputs["clip"], return_dict=False)[0]

    del weights
    model.eval()
    rss_loaded = peak_rss_mib()
    times = []
    with torch.inference_mode():
        out = forward()  # warm-up
        for _ in range(iters):
            t0 = time.perf_counter()
            out = forward()
            times.append(time.perf_counter() - t0)
    from safetensors.torch import save_file

    save_file({"out": out.contiguous()}, str(folder / f"out_{impl}.safetensors"))
    times.sort()
    emit({"seconds": times[len(times) // 2], "peak_rss_mib": peak_rss_mib(), "rss_after_load_mib": rss_loaded})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--height", type=int, default=40, help="latent height (image height / 8)")
    p.add_argument("--width", type=int, default=72, help="latent width (image width / 8)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--worker", choices=["ours", "diffusers"], help=argparse.SUPPRESS)
    p.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args.worker, args.dir, args.iters, args.threads)
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        prepare(args, folder)
        cfg = mid_config(args)
        tokens = 2 * (args.height // 2) * (args.width // 2)
        print(
            f"DiT forward, fp32 CPU, {args.threads} threads: dim {cfg.dim}, {cfg.num_heads} heads, {cfg.num_layers} "
            f"layers, FFN {cfg.ffn_dim}; 2 latent frames {args.height}x{args.width} = {tokens} tokens, 512 text "
            f"(120 real), 257 image tokens; median of {args.iters} forwards per process, {args.rounds} rounds"
        )
        common = ["--dir", str(folder), "--iters", str(args.iters), "--threads", str(args.threads)]
        script = str(Path(__file__).resolve())
        results = alternate(
            {"ours": [script, "--worker", "ours", *common], "diffusers": [script, "--worker", "diffusers", *common]},
            args.rounds,
        )
        from safetensors.torch import load_file

        from tests.helpers import rel_err

        a = load_file(str(folder / "out_ours.safetensors"))["out"]
        b = load_file(str(folder / "out_diffusers.safetensors"))["out"]
        print(summarize(results, reference="diffusers"))
        print(f"output relative error ours vs diffusers: {rel_err(a, b):.2e}")


if __name__ == "__main__":
    main()
