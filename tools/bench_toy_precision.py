"""bf16 autocast against fp32 for ChronoEdit-Toy's training steps on this CPU (the recipe uses the faster one).

    python tools/bench_toy_precision.py [--rounds 5]

One DiT training step (forward, backward, AdamW) at the toy preset on a pair batch (16 × 2 latent frames) and a
clip batch (4 × 8 latent frames), and one VAE training step (8 × 5 frames, 32² crops); median seconds per step
and samples/s for fp32 and for ``torch.autocast("cpu", bfloat16)`` (the trainer's ``precision.compute``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from chronoedit.models.dit import ChronoEditDiT  # noqa: E402
from chronoedit.models.spec import MODEL_PRESETS  # noqa: E402
from chronoedit.models.vae import WanVAE  # noqa: E402


def timed(step, rounds: int) -> float:
    step()  # warm-up
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def dit_step(precision: str, batch: int, frames: int):
    spec = MODEL_PRESETS["toy"]
    m = ChronoEditDiT(spec.dit).init_weights(torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(m.parameters(), 1e-4)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, spec.dit.in_channels, frames, 16, 16, generator=g)
    t, ctx = torch.rand(batch, generator=g) * 1000, torch.randn(batch, 10, spec.dit.text_dim, generator=g)
    clip = torch.randn(batch, spec.image_encoder.num_tokens, spec.dit.image_dim, generator=g)

    def step():
        with torch.autocast("cpu", torch.bfloat16, enabled=precision == "bfloat16"):
            out = m(x, t, ctx, clip)
        out.float().pow(2).mean().backward()
        opt.step()
        opt.zero_grad()

    return step


def vae_step(precision: str):
    vae = WanVAE(MODEL_PRESETS["toy"].vae).init_weights(torch.Generator().manual_seed(0)).train()
    opt = torch.optim.AdamW(vae.parameters(), 1e-4)
    video = torch.rand(8, 3, 5, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1

    def step():
        with torch.autocast("cpu", torch.bfloat16, enabled=precision == "bfloat16"):
            mean = vae.encode_moments(video).chunk(2, dim=1)[0]
            recon = vae.decode_step(mean)[0]
        (recon.float() - video).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()

    return step


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    print(f"threads {torch.get_num_threads()}, torch {torch.__version__}")
    print("| step | fp32 s/step | bf16 s/step | bf16 / fp32 | fp32 samples/s |")
    print("|---|---|---|---|---|")
    cases = {"DiT pairs 16×2 frames": (16, lambda p: dit_step(p, 16, 2)),
             "DiT clips 4×8 frames": (4, lambda p: dit_step(p, 4, 8)),
             "VAE 8×5 frames, 32²": (8, vae_step)}  # fmt: skip
    for name, (batch, make) in cases.items():
        s = {prec: timed(make(prec), args.rounds) for prec in ("float32", "bfloat16")}
        ratio = s["bfloat16"] / s["float32"]
        print(f"| {name} | {s['float32']:.3f} | {s['bfloat16']:.3f} | {ratio:.2f}× | {batch / s['float32']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
