"""Benchmark the whole edit: ours vs diffusers' ChronoEditPipeline on the same random weights and inputs.

    python tools/bench_edit.py                                  # 50-step CFG edit, 160×288, 3 alternating rounds
    python tools/bench_edit.py --steps 8 --guidance 1 --shift 2   # the distillation-LoRA settings
    python tools/bench_edit.py --reasoning 10                   # temporal reasoning for the first 10 steps
    python tools/bench_edit.py --no-cache                       # ours without the exact context reuse
    python tools/bench_edit.py --step-cache 0.12                # ours with MagCache (calibrated untimed, on another
                                                                # image), against diffusers' exact edit

A diffusers-layout pipeline folder is written once: the DiT at Wan-1.3B width (1536, 12 heads × 128, FFN 8960;
``--layers`` blocks), UMT5 and CLIP at their real widths (4096 / 1280; one and two blocks), the released Wan 2.1
VAE configuration. Each implementation runs in its own process (peak RSS is its own), A B A B …: load,
``--warmup`` untimed edits (default 0), then the timed edit (text, image, VAE encode, denoise, VAE decode). Medians of pairwise
ratios and the output difference (frames, max |Δ| × 255; latents, max |Δ| / σ) are printed, then where the
timed edit's seconds went in each implementation, measured the same way on both (a wall-clock wrapper around the
text encoder's, the image tower's and the DiT's forward and the VAE's encode and decode; "rest" is the remainder).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import torch  # noqa: E402
from _bench import alternate, emit, peak_rss_mib, summarize  # noqa: E402

PROMPT, NEGATIVE = "make the red circle bigger", "blurry"
SIZES = {
    "dit": dict(num_attention_heads=12, attention_head_dim=128, ffn_dim=8960, text_dim=4096, image_dim=1280,
                added_kv_proj_dim=1536, freq_dim=256),
    "umt5": dict(d_model=4096, d_kv=64, num_heads=64, d_ff=10240, num_layers=1),
    "clip": dict(hidden_size=1280, intermediate_size=5120, num_attention_heads=16, num_hidden_layers=2,
                 image_size=224, patch_size=14, projection_dim=1024),
    "vae": dict(base_dim=96, num_res_blocks=2),  # the released Wan 2.1 VAE
}  # fmt: skip


def image(height: int, width: int, seed: int = 3):
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    base = torch.rand(height // 16, width // 16, 3, generator=g)
    big = torch.nn.functional.interpolate(base.permute(2, 0, 1)[None], size=(height, width), mode="bilinear")[0]
    return Image.fromarray((big.permute(1, 2, 0).numpy() * 255).round().astype("uint8"))


STAGES = ("text", "image", "vae_encode", "dit", "vae_decode")


def _time_calls(owners: dict[str, tuple[object, str]], seconds: dict[str, float]) -> None:
    """Wrap ``owner.method`` (on the instance) so that its wall time adds up in ``seconds[stage]``."""
    for stage, (owner, method) in owners.items():
        inner = getattr(owner, method)

        def timed(*a, _inner=inner, _stage=stage, **kw):
            t0 = time.perf_counter()
            try:
                return _inner(*a, **kw)
            finally:
                seconds[_stage] += time.perf_counter() - t0

        setattr(owner, method, timed)


def worker(impl: str, folder: Path, args) -> None:
    from safetensors.torch import save_file

    torch.set_num_threads(args.threads)
    im, frames = image(args.height, args.width), 29 if args.reasoning else 5
    skips: dict = {}  # ours with --step-cache: DiT forwards skipped / computed + skipped
    if impl == "ours":
        from chronoedit.pipeline import EditPipeline, EditRequest
        from chronoedit.pipeline.components import load_components
        from chronoedit.sampling import SamplerConfig

        pipe = EditPipeline(load_components(str(folder), dtype=torch.float32), dtype=torch.float32,
                            context_cache=not args.no_cache, progress=False)  # fmt: skip
        request = EditRequest(image=im, prompt=PROMPT, negative_prompt=NEGATIVE, seed=7, guidance_scale=args.guidance,
                              reasoning_steps=args.reasoning, num_frames=29, height=args.height, width=args.width)  # fmt: skip
        sampler = SamplerConfig(steps=args.steps, shift=args.shift)
        if args.step_cache is not None:  # MagCache's calibration (untimed): an un-skipped edit of another image
            import dataclasses

            from chronoedit.sampling.step_cache import Calibrator, MagCacheSettings

            pipe.step_cache = calibrator = Calibrator()
            with torch.inference_mode():
                pipe(dataclasses.replace(request, image=image(args.height, args.width, seed=11), seed=8), sampler)
            pipe.step_cache = MagCacheSettings(calibrator.calibration(), threshold=args.step_cache)
        c = pipe.c
        owners = {"text": (c.text_encoder, "forward"), "image": (c.image_encoder, "forward"),
                  "vae_encode": (c.vae, "encode"), "dit": (c.dit, "forward"), "vae_decode": (c.vae, "decode")}  # fmt: skip

        def edit():
            r = pipe(request, sampler)
            if args.step_cache is not None and r.step_cache is not None:
                skips.update(skipped=r.step_cache.skipped, forwards=r.step_cache.forwards)
            return r.video, r.latents
    else:
        import diffusers

        pipe = diffusers.ChronoEditPipeline.from_pretrained(str(folder), torch_dtype=torch.float32)
        pipe.scheduler = diffusers.UniPCMultistepScheduler.from_config(pipe.scheduler.config, flow_shift=args.shift)
        pipe.set_progress_bar_config(disable=True)
        owners = {"text": (pipe.text_encoder, "forward"), "image": (pipe.image_encoder, "forward"),
                  "vae_encode": (pipe.vae, "encode"), "dit": (pipe.transformer, "forward"),
                  "vae_decode": (pipe.vae, "decode")}  # fmt: skip

        def edit():
            final = {}

            def keep(_p, i, t, kw):
                final["latents"] = kw["latents"].clone()
                return kw

            out = pipe(image=im, prompt=PROMPT, negative_prompt=NEGATIVE, height=args.height, width=args.width,
                       num_frames=frames, num_inference_steps=args.steps, guidance_scale=args.guidance,
                       generator=torch.Generator("cpu").manual_seed(7), output_type="np",
                       enable_temporal_reasoning=args.reasoning > 0, num_temporal_reasoning_steps=args.reasoning,
                       callback_on_step_end=keep).frames[0]  # fmt: skip
            return torch.from_numpy(out).permute(0, 3, 1, 2), final["latents"]

    stages = dict.fromkeys(STAGES, 0.0)
    _time_calls(owners, stages)
    with torch.inference_mode():
        for _ in range(args.warmup):
            edit()
        stages.update(dict.fromkeys(STAGES, 0.0))  # the timed edit only
        t0 = time.perf_counter()
        video, latents = edit()
        seconds = time.perf_counter() - t0
    stages["rest"] = seconds - sum(stages.values())
    save_file({"video": video.float().contiguous(), "latents": latents.float().contiguous()},
              str(folder / f"out_{impl}.safetensors"))  # fmt: skip
    emit({"seconds": seconds, "peak_rss_mib": peak_rss_mib(), "stages": stages,
          **({"step_cache": skips} if skips else {})})  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--height", type=int, default=160)
    p.add_argument("--width", type=int, default=288)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--shift", type=float, default=5.0)
    p.add_argument("--reasoning", type=int, default=0, help="reasoning steps k (0: a plain 5-frame edit)")
    p.add_argument("--no-cache", action="store_true", help="ours without the exact context reuse")
    p.add_argument("--step-cache", type=float, default=None, metavar="THRESHOLD", help="ours with MagCache")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=0, help="untimed edits first (a 50-step edit amortises its start)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--worker", choices=["ours", "diffusers", "prepare"], help=argparse.SUPPRESS)
    p.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker == "prepare":  # in its own process: a child inherits its parent's peak RSS on Linux
        from tests.fixtures_pipeline import make_diffusers_pipeline_folder

        sizes = {**SIZES, "dit": {**SIZES["dit"], "num_layers": args.layers}}
        make_diffusers_pipeline_folder(args.dir, max_shard_size="2GB", sizes=sizes)
        return
    if args.worker:
        worker(args.worker, args.dir, args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        subprocess.run([sys.executable, __file__, *sys.argv[1:], "--worker", "prepare", "--dir", str(folder / "pipe")],
                       check=True)  # fmt: skip
        tokens = 2 * (args.height // 16) * (args.width // 16) if not args.reasoning else None
        print(f"whole edit, fp32 CPU, {args.threads} threads: DiT 1536 wide × {args.layers} blocks, {args.height}x"
              f"{args.width} ({tokens or 'reasoning'} tokens), {args.steps} steps, guidance {args.guidance}, "
              f"reasoning {args.reasoning}, context cache {'off' if args.no_cache else 'on'}, step cache "
              f"{'off' if args.step_cache is None else f'magcache {args.step_cache}'}; {args.rounds} rounds")  # fmt: skip
        script = str(Path(__file__).resolve())
        argv = [a for a in sys.argv[1:] if a != "--worker"]
        common = [*argv, "--dir", str(folder / "pipe")]
        results = alternate({"ours": [script, "--worker", "ours", *common],
                             "diffusers": [script, "--worker", "diffusers", *common]}, args.rounds)  # fmt: skip
        from safetensors.torch import load_file

        a, b = (load_file(str(folder / "pipe" / f"out_{n}.safetensors")) for n in ("ours", "diffusers"))
        print(summarize(results, reference="diffusers"))
        frames = (a["video"] - b["video"]).abs().max().item() * 255
        lat = ((a["latents"] - b["latents"]).abs().max() / b["latents"].std()).item()
        print(f"output difference ours vs diffusers: frames {frames:.4f}/255, latents {lat:.2e} σ")
        print("where the timed edit's seconds went (medians over the rounds):")
        print(f"{'stage':>10} | {'ours s':>7} | {'diffusers s':>11} | ratio")
        for stage in (*STAGES, "rest"):
            o, d = (statistics.median(r["stages"][stage] for r in results[n]) for n in ("ours", "diffusers"))
            print(f"{stage:>10} | {o:7.2f} | {d:11.2f} | {o / d if d > 0 else float('nan'):.2f}")
        if "step_cache" in results["ours"][-1]:
            sc = results["ours"][-1]["step_cache"]
            print(f"step cache: {sc['skipped']} of {sc['forwards']} DiT forwards skipped")


if __name__ == "__main__":
    main()
