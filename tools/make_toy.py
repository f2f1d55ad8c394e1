"""The ChronoEdit-Toy recipe: every stage from nothing on a CPU, timed (``make toy``).

    python tools/make_toy.py --work runs/toy                  # the whole recipe (≤ 90 min on a 2-core CPU)
    python tools/make_toy.py --work runs/toy --ship           # … and copy the result to chronoedit/assets/toy
    python tools/make_toy.py --work /tmp/smoke --smoke        # every stage for a few steps (tests)

Stages (each a real entry point or library call; ``WORK/recipe.json`` records seconds and samples/s of each):

    dataset    tools/make_toy_dataset.py: pairs and 29-frame trajectory clips of the toy world (train split)
    tokenizer  a sentencepiece unigram model on every prompt of the grammar (UMT5's conventions)
    vae        chronoedit/training/vae.py: the causal Wan VAE from scratch, then its latent statistics; snapshots
               every 1000 steps scored by the round trip of true edits (a perfect DiT's ceiling) on a validation seed
    base       a native checkpoint: the trained VAE, the DiT / UMT5 / CLIP at seeded random init, the tokenizer
    preencode  train/preencode.py at 128×128 (clips: 29 frames → 8 latent frames)
    train      train/train.py experiment=toy (the DiT from scratch; pairs and clips mixed) → WORK/run/export
    eval       infer/eval.py on the held-out split (an unseen seed) at the toy's defaults

UMT5 and CLIP stay at their seeded random initialisation (frozen): training them would need the encoders in the
DiT's training loop, which pre-encoding exists to avoid.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SHIP = ROOT / "chronoedit" / "assets" / "toy"
STAGES = ("dataset", "tokenizer", "vae", "base", "preencode", "train", "eval")
# The CI regression check of the shipped model (tests/test_toy_model.py): 36 held-out edits (6 per kind), 8 steps,
# no reasoning; ``ship`` measures it into recipe.json → regression, the test asserts the same figure.
# Snapshots of the VAE are scored on this split (neither the training seed nor the held-out evaluation's), so that
# choosing among them never looks at the held-out edits.
VALIDATION_SEED = 2
REGRESSION = [
    "preset=toy",
    "benchmark.n=36",
    "benchmark.seed=1",
    "sampler.steps=8",
    "reasoning.steps=0",
    "benchmark.grid=0",
]


def grammar_prompts() -> list[str]:
    """Every prompt the toy grammar can say (the tokenizer's whole corpus)."""
    from chronoedit.toyworld.edits import DIRECTIONS, ROTATIONS, Edit
    from chronoedit.toyworld.world import COLORS, SHAPES

    out = []
    for c in COLORS:
        for s in SHAPES:
            t = {"color": c, "shape": s}
            out += [Edit("move", **t, direction=d).prompt for d in DIRECTIONS]
            out += [Edit("scale", **t, bigger=b).prompt for b in (True, False)]
            out += [Edit("recolor", **t, new_color=n).prompt for n in COLORS if n != c]
            out += [Edit("rotate", **t, degrees=d).prompt for d in ROTATIONS.get(s, ())]
            out.append(Edit("drop", **t).prompt)
            out += [Edit("swap", **t, other_color=o, other_shape=q).prompt for o in COLORS if o != c for q in SHAPES]
    return out


def run(cmd: list[str], log: Path) -> None:
    """A stage's entry point in its own process; its output goes to ``log`` (the error's tail is printed)."""
    with log.open("w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    if proc.returncode:
        tail = log.read_text().splitlines()[-15:]
        raise SystemExit(f"stage failed ({' '.join(cmd[:3])} …), see {log}:\n" + "\n".join(tail))


def stage_tokenizer(work: Path) -> dict:
    """A sentencepiece word model (one piece per word of the grammar) with UMT5's conventions: pad 0, eos 1,
    unk 2, no bos, byte fallback for anything else."""
    import sentencepiece as spm

    folder = work / "tokenizer"
    folder.mkdir(parents=True, exist_ok=True)
    prompts = grammar_prompts()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(prompts), model_prefix=str(folder / "spiece"), model_type="word", vocab_size=300,
        hard_vocab_limit=False, byte_fallback=True, pad_id=0, eos_id=1, unk_id=2, bos_id=-1, num_threads=1,
        minloglevel=2,
    )  # fmt: skip
    (folder / "spiece.vocab").unlink()
    sp = spm.SentencePieceProcessor(model_file=str(folder / "spiece.model"))
    longest = max(len(sp.encode(q)) for q in prompts) + 1  # + EOS
    return {"prompts": len(prompts), "pieces": sp.get_piece_size(), "longest_prompt_tokens": longest}


def roundtrip_score(vae, n: int, seed: int) -> dict:
    """The VAE's ceiling on held-out edits: each true pair video [input, edit × 4] encoded, decoded and its last
    frame scored as an edit (what ``infer/eval.py benchmark.baseline=vae_roundtrip`` measures through the
    pipeline; here on the bare VAE, to judge snapshots while the VAE trains)."""
    import numpy as np
    import torch
    from PIL import Image

    from chronoedit.toyworld.draw import render
    from chronoedit.toyworld.metrics import score_edit
    from chronoedit.toyworld.sample import sample_example

    def frame(img):
        return torch.from_numpy(np.asarray(img, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)

    rows = []
    vae.eval()
    with torch.no_grad():
        for i in range(n):
            ex = sample_example(seed, i, split="test")
            before, after = render(ex.scene), render(ex.target)
            video = torch.stack([frame(before)] + [frame(after)] * 4, 1)[None]  # (1, 3, 5, H, W)
            last = vae.decode_raw(vae.encode_moments(video).chunk(2, 1)[0])[0, :, -1].clamp(-1, 1)
            pred = Image.fromarray(((last + 1) * 127.5).round().byte().permute(1, 2, 0).numpy())
            rows.append(score_edit(pred, ex.truth(), after))
    return {k: round(float(np.mean([r[k] for r in rows if r.get(k) is not None])), 4)
            for k in ("success", "found", "psnr", "psnr_bg")}  # fmt: skip


def stage_vae(work: Path, args) -> dict:
    from safetensors.torch import save_file

    from chronoedit.checkpoint.native import config_to_dict
    from chronoedit.models.spec import MODEL_PRESETS
    from chronoedit.training.vae import VAETrainConfig, latent_stats, train_vae

    cfg = VAETrainConfig(dataset=str(work / "data"), steps=args.vae_steps, batch_size=8, crop=32, lr=args.vae_lr,
                         init_gain=args.vae_gain, object_crops=args.vae_object_crops, schedule=args.vae_schedule,
                         snapshot_every=args.vae_snapshot_every, stats_videos=16 if args.smoke else 128,
                         log_every=10 if args.smoke else 100)  # fmt: skip
    out = work / "vae"
    out.mkdir(exist_ok=True)
    n_check = 4 if args.smoke else 40

    def save(folder: Path, vae) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous() for k, v in vae.state_dict().items()}, folder / "vae.safetensors")
        (folder / "config.json").write_text(json.dumps(config_to_dict(vae.cfg)))

    def snapshot(step: int, vae, bank) -> None:
        """WORK/vae/step_N: a checkpoint with its latent statistics and round-trip score (for a longer run's
        success against VAE training time; with schedule=constant it equals a run of N steps)."""
        import dataclasses

        vae.eval()
        mean, std, score = latent_stats(vae, bank, cfg.stats_videos, cfg.seed)
        copy = dataclasses.replace(vae.cfg, latents_mean=tuple(mean), latents_std=tuple(std))
        cfg_saved, vae.cfg = vae.cfg, copy
        save(out / f"step_{step}", vae)
        vae.cfg = cfg_saved
        check = {"step": step, "psnr_db": round(score, 2), "roundtrip": roundtrip_score(vae, n_check, VALIDATION_SEED)}
        (out / f"step_{step}" / "report.json").write_text(json.dumps(check))
        print(f"vae snapshot {json.dumps(check)}", flush=True)

    vae, report = train_vae(cfg, MODEL_PRESETS["toy"].vae, threads=args.threads, snapshot=snapshot)
    save(out, vae)
    report["roundtrip"] = roundtrip_score(vae, n_check, VALIDATION_SEED)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    return {k: report[k] for k in ("steps", "train_seconds", "frames_per_s", "samples_per_s", "psnr_db", "roundtrip")}


def stage_base(work: Path, args) -> dict:
    """The native checkpoint every later stage reads: trained VAE (bf16, norms fp32), the rest seeded random."""
    import dataclasses
    import tempfile

    import torch
    from safetensors.torch import load_file

    from chronoedit.checkpoint.native import config_from_dict, save_native
    from chronoedit.models.precision import island_dtype
    from chronoedit.models.spec import MODEL_PRESETS
    from chronoedit.models.vae import WanVAE
    from chronoedit.models.vae.config import VAEConfig
    from chronoedit.pipeline.components import random_components, save_image_processor

    vae_cfg = config_from_dict(VAEConfig, json.loads((work / "vae" / "config.json").read_text()), "vae config")
    spec = dataclasses.replace(MODEL_PRESETS["toy"], vae=vae_cfg)
    c = random_components(spec, args.init_seed)
    vae = {
        k: v.to(island_dtype(WanVAE.keep_fp32, k, torch.bfloat16))
        for k, v in load_file(work / "vae" / "vae.safetensors").items()
    }
    with tempfile.TemporaryDirectory() as tmp:
        folders = {"tokenizer": work / "tokenizer", "image_processor": save_image_processor(c, Path(tmp))}
        parts = {"dit": c.dit, "vae": (vae_cfg, vae), "text_encoder": c.text_encoder, "image_encoder": c.image_encoder}
        save_native(work / "base", parts, folders=folders, source="tools/make_toy.py base", overwrite=True)
    return {"init_seed": args.init_seed}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", required=True, help="working folder (every stage's output; refused if not empty)")
    p.add_argument("--n", type=int, default=3000, help="training examples")
    p.add_argument("--clip-ratio", type=float, default=0.1, help="share of trajectory clips")
    p.add_argument("--vae-steps", type=int, default=5000)
    p.add_argument("--vae-lr", type=float, default=1.5e-3)
    p.add_argument("--vae-gain", type=float, default=2.45, help="VAE conv init scale (VAETrainConfig.init_gain)")
    p.add_argument("--vae-object-crops", type=float, default=0.5, help="share of VAE crops placed on an object")
    p.add_argument("--vae-schedule", choices=("cosine", "constant"), default="constant")
    p.add_argument("--vae-snapshot-every", type=int, default=1000, help="WORK/vae/step_N snapshots, round-trip "
                   "scored on a validation seed (0: none)")  # fmt: skip
    p.add_argument("--dit-steps", type=int, default=3000)
    p.add_argument("--eval-n", type=int, default=500, help="held-out edits evaluated")
    p.add_argument("--seed", type=int, default=0, help="dataset seed (the held-out split uses --eval-seed)")
    p.add_argument("--eval-seed", type=int, default=1)
    p.add_argument("--init-seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--train", nargs="*", default=[], help="extra train/train.py overrides (ablations)")
    p.add_argument("--tag", default="", help="ablations: train into WORK/run-TAG, evaluate into WORK/eval-TAG")
    p.add_argument("--from-stage", choices=STAGES, default="dataset", help="resume: skip the stages before")
    p.add_argument("--to-stage", choices=STAGES, default="eval", help="stop after this stage")
    p.add_argument("--smoke", action="store_true", help="every stage for a few steps (tests)")
    p.add_argument("--ship", action="store_true", help="copy the export to chronoedit/assets/toy with its card")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)  # the VAE stage's progress
    if args.smoke:
        args.n, args.vae_steps, args.dit_steps, args.eval_n = 24, 2, 4, 4
    work = Path(args.work)
    run_dir, eval_dir = (
        (work / f"run-{args.tag}", work / f"eval-{args.tag}") if args.tag else (work / "run", work / "eval")
    )
    if args.from_stage == "dataset" and work.exists() and any(work.iterdir()):
        print(f"error: --work {work} is not empty (use --from-stage to resume)", file=sys.stderr)
        return 2
    work.mkdir(parents=True, exist_ok=True)
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    py = sys.executable
    recipe_path = work / ("recipe.json" if not args.tag else f"recipe-{args.tag}.json")
    recipe = json.loads(recipe_path.read_text()) if recipe_path.is_file() else {"stages": {}}
    if args.tag and args.from_stage not in ("train", "eval"):
        print("error: --tag is for ablations of the DiT: use it with --from-stage train (or eval)", file=sys.stderr)
        return 2
    recipe["args"] = vars(args)
    todo = STAGES[STAGES.index(args.from_stage) : STAGES.index(args.to_stage) + 1]
    if not todo:
        print(f"error: --to-stage {args.to_stage} comes before --from-stage {args.from_stage}", file=sys.stderr)
        return 2
    for stage in todo:
        t0 = time.perf_counter()
        info: dict = {}
        if stage == "dataset":
            run([py, "tools/make_toy_dataset.py", "--out", str(work / "data"), "--n", str(args.n), "--seed",
                 str(args.seed), "--clip-ratio", str(args.clip_ratio), "--workers", "2"], logs / "dataset.log")  # fmt: skip
            info = json.loads((logs / "dataset.log").read_text().splitlines()[0])
        elif stage == "tokenizer":
            info = stage_tokenizer(work)
        elif stage == "vae":
            info = stage_vae(work, args)
        elif stage == "base":
            info = stage_base(work, args)
        elif stage == "preencode":
            run([py, "train/preencode.py", f"dataset={work / 'data'}", f"output={work / 'cache'}",
                 f"checkpoint={work / 'base'}", "height=128", "width=128", "batch=8", "runtime.device=cpu", "overwrite=true"], logs / "preencode.log")  # fmt: skip
            info = {"examples": args.n}
        elif stage == "train":
            run([py, "train/train.py", "experiment=toy", f"checkpoint={work / 'base'}", f"data.cache={work / 'cache'}",
                 f"run_dir={run_dir}", f"steps={args.dit_steps}", "overwrite=true",
                 *(["checkpoints.every=2", "log_every=1", "ema.decay=0.5"] if args.smoke else []), *args.train],
                logs / "train.log")  # fmt: skip
            info = train_summary(run_dir, time.perf_counter() - t0)
        elif stage == "eval":
            run([py, "infer/eval.py", "preset=toy", f"checkpoint={run_dir / 'export'}", f"benchmark.n={args.eval_n}",
                 f"benchmark.seed={args.eval_seed}", f"output_dir={eval_dir}", "overwrite=true",
                 *(["sampler.steps=2", "reasoning.steps=1"] if args.smoke else [])], logs / "eval.log")  # fmt: skip
            info = eval_summary(eval_dir)
        info["seconds"] = round(time.perf_counter() - t0, 1)
        recipe["stages"][stage + (f"-{args.tag}" if args.tag and stage in ("train", "eval") else "")] = info
        recipe["total_seconds"] = round(sum(s["seconds"] for s in recipe["stages"].values()), 1)
        recipe_path.write_text(json.dumps(recipe, indent=1))
        print(f"{stage:10s} {info['seconds']:8.1f} s  {json.dumps({k: v for k, v in info.items() if k != 'seconds'})}",
              flush=True)  # fmt: skip
    print(f"total {recipe['total_seconds']:.0f} s; {recipe_path}")
    if args.ship:
        ship(run_dir, recipe)
    return 0


def train_summary(run_dir: Path, seconds: float) -> dict:
    """The last loss, samples/s over the stage's wall time and, per step kind, the median of the logged steps."""
    import statistics

    from omegaconf import OmegaConf

    f = run_dir / "metrics.jsonl"
    rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()] if f.is_file() else []
    if not rows:
        return {}
    batch = OmegaConf.load(run_dir / "config.yaml").batch_size
    by_kind = {}
    for kind in sorted({r.get("kind", "pair") for r in rows}):
        rates = [r["samples_per_s"] for r in rows if r.get("kind", "pair") == kind and "samples_per_s" in r]
        by_kind[f"{kind}_samples_per_s"] = round(statistics.median(rates), 2)
    return {"steps": rows[-1]["step"], "loss": rows[-1]["loss"],
            "samples_per_s": round(rows[-1]["step"] * batch / seconds, 2), **by_kind}  # fmt: skip


def eval_summary(folder: Path) -> dict:
    """Success (mean and 95% interval) overall and per edit kind, the PSNR (background, whole image to the target)
    and the centroid error, from metrics.json."""
    m = json.loads((folder / "metrics.json").read_text())

    def pick(d: dict) -> dict:
        out = {"success": d["success"]["mean"], "ci95": d["success"]["ci95"], "n": d["success"]["n"]}
        for k in ("psnr_bg", "psnr", "centroid_error_px"):
            if d.get(k):
                out[k] = d[k]["mean"]
        return out

    return {"overall": pick(m["overall"]), **{k: pick(v) for k, v in m["by_kind"].items()}}


def demo_scene():
    """The demo input shipped as ``example.png``: a red circle with room to move left, two bystanders."""
    from chronoedit.toyworld.world import Obj, Scene

    return Scene("light_grey", (Obj("circle", "red", 88.0, 44.0, 26.0), Obj("square", "blue", 36.0, 92.0, 24.0),
                                Obj("triangle", "yellow", 92.0, 98.0, 28.0)))  # fmt: skip


def ship(run_dir: Path, recipe: dict) -> None:
    """RUN/export → chronoedit/assets/toy, with example.png (the demo scene), recipe.json, MODEL_CARD.md."""
    from omegaconf import OmegaConf

    from chronoedit.toyworld.draw import render
    from chronoedit.toyworld.world import valid

    if SHIP.exists():
        shutil.rmtree(SHIP)
    shutil.copytree(run_dir / "export", SHIP)
    scene = demo_scene()
    assert valid(scene)
    render(scene).save(SHIP / "example.png")
    out = run_dir.parent / "regression"
    run([sys.executable, "infer/eval.py", "checkpoint=toy", f"output_dir={out}", "overwrite=true", *REGRESSION],
        run_dir.parent / "logs" / "regression.log")  # fmt: skip
    recipe["regression"] = {"args": REGRESSION, **eval_summary(out)["overall"]}
    (SHIP / "recipe.json").write_text(json.dumps(recipe, indent=1) + "\n")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    size = sum(f.stat().st_size for f in SHIP.rglob("*") if f.is_file())
    ev = recipe["stages"].get("eval", {})
    preset = OmegaConf.load(ROOT / "configs" / "preset" / "toy.yaml")
    rows = [f"| {k} | {v['success']:.3f} [{v['ci95'][0]:.3f}, {v['ci95'][1]:.3f}] | {v['n']} |"
            for k, v in ev.items() if isinstance(v, dict) and "success" in v]  # fmt: skip
    card = [
        "# ChronoEdit-Toy",
        "",
        "ChronoEdit's whole stack trained from scratch on the toy world (chronoedit/toyworld) on a 2-core CPU:",
        "the causal Wan VAE and the DiT trained, UMT5 and CLIP frozen at their seeded random initialisation,",
        "a sentencepiece word tokenizer of the edit grammar. Default of `infer/edit.py` (`checkpoint=toy`).",
        "",
        f"- Recipe: `make toy` (`python tools/make_toy.py --work runs/toy --ship`), at commit "
        f"{commit.stdout.strip() or '?'} plus the working tree; arguments in recipe.json.",
        "- Stages (seconds): "
        + ", ".join(f"{k} {v['seconds']:.0f}" for k, v in recipe["stages"].items())
        + f"; total {recipe['total_seconds'] / 60:.1f} min.",
        f"- Size: {size / 2**20:.1f} MiB (DiT in bf16, fp32 islands kept; VAE in bf16, norm scales fp32).",
        f"- Settings: configs/preset/toy.yaml (UniPC {preset.sampler.steps} steps, shift {preset.sampler.shift:g}, guidance "
        f"{preset.guidance_scale:g}, reasoning {preset.reasoning.steps} steps, {preset.height}×{preset.width}).",
        "",
        "Held-out split (`infer/eval.py`, benchmark.seed=1, an unseen seed), success with 95% Wilson interval:",
        "",
        "| kind | success | n |",
        "|---|---|---|",
        *rows,
    ]
    (SHIP / "MODEL_CARD.md").write_text("\n".join(card) + "\n")
    print(f"shipped {SHIP} ({size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    sys.exit(main())
