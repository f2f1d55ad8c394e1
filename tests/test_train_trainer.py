"""The trainer on the tiny model (one process): overfitting, LoRA learning and export (our pipeline and
diffusers load it and agree), exact resume after an interruption, atomic checkpoints, the run-folder rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from chronoedit.builders import register, to_object
from chronoedit.checkpoint.keymaps.dit import OURS_TO_DIFFUSERS, config_to_diffusers
from chronoedit.lora import fuse_lora
from chronoedit.lora.formats import read_lora
from chronoedit.training.checkpointing import complete_checkpoints, latest_checkpoint, step_dir
from chronoedit.training.config import TrainConfig
from chronoedit.training.distributed import init_world
from chronoedit.training.metrics import read_metrics
from chronoedit.training.model import base_weights
from chronoedit.training.trainer import Trainer
from tests.helpers import rel_err

ROOT = Path(__file__).resolve().parents[1]
WORLD = init_world("cpu")


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def config(*overrides: str, experiment: str = "tiny_lora_cpu") -> TrainConfig:
    """configs/train.yaml + an experiment + overrides, as the command line composes them."""
    register()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
            cfg = compose(config_name="train", overrides=[f"experiment={experiment}", *overrides])
    finally:
        GlobalHydra.instance().clear()
    return to_object({k: v for k, v in cfg.items() if k != "hydra"}, TrainConfig)


@pytest.mark.slow
def test_overfitting_four_pairs_drives_the_loss_down_90_percent(tmp_path):
    """Full fine-tuning of the tiny model on 4 synthetic pairs with the real objective (fresh σ and ε every step);
    the loss is measured on 8 fixed (σ, ε) draws per pair, the same before and after."""
    cfg = config("debug=overfit")
    trainer = Trainer(cfg, tmp_path, WORLD)
    before = trainer.eval_loss(draws=8)
    records = trainer.fit()
    after = trainer.eval_loss(draws=8)
    reduction = 1 - after / before
    first, last = (sum(r["loss"] for r in rs) / len(rs) for rs in (records[:10], records[-10:]))
    print(f"overfit: eval loss {before:.4f} -> {after:.4f} ({100 * reduction:.1f}% lower) in {len(records)} steps; "
          f"training loss {first:.3f} -> {last:.3f} (means of the first and last 10 steps)")  # fmt: skip
    assert reduction >= 0.9


def test_lora_learns_exports_and_changes_the_edit(tmp_path):
    """LoRA on the real objective (fresh σ and ε every step): only the adapters move, the loss falls, the export
    is a PEFT file our reader loads back exactly, and the edit pipeline's output changes with it."""
    from chronoedit.pipeline.components import tiny_components
    from chronoedit.pipeline.images import load_image
    from chronoedit.pipeline.job import example_image
    from chronoedit.pipeline.pipeline import EditPipeline, EditRequest

    cfg = config("steps=40", "lora.rank=16", "lora.alpha=16", "checkpoints.every=0")
    trainer = Trainer(cfg, tmp_path, WORLD)
    before = trainer.eval_loss()
    trainer.fit()
    after = trainer.eval_loss()
    print(f"LoRA (fresh draws): eval loss {before:.4f} -> {after:.4f} ({100 * (1 - after / before):.1f}% lower)")
    assert after < 0.8 * before

    base = base_weights(config()).tensors
    trained = trainer.model.state_dict()
    assert all(torch.equal(trained[k], v) for k, v in base.items())  # the base model is untouched
    path = trainer.export()
    assert path == tmp_path / "lora.safetensors"
    loras, scheme = read_lora(path)
    assert scheme == "peft" and sorted(loras) == sorted(trainer.targets)
    for name, w in loras.items():
        mod = trainer.model.get_submodule(name)
        assert torch.equal(w.down, mod.lora_A["default"]) and torch.equal(w.up, mod.lora_B["default"])
        assert w.scale == 1.0
    assert max(float(w.up.abs().max()) for w in loras.values()) > 0

    comps = tiny_components(0)
    request = EditRequest(image=load_image(example_image()), prompt="add a hat", max_area=64 * 64, guidance_scale=1.0)
    plain = EditPipeline(comps, progress=False)(request).latents
    fuse_lora(comps.dit, [(loras, 1.0)])
    edited = EditPipeline(comps, progress=False)(request).latents
    change = rel_err(edited, plain)
    print(f"LoRA changes the edit's final latents by {change:.3f} (relative)")
    assert change > 1e-3


def test_exported_lora_loads_in_diffusers_and_matches_ours(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    pytest.importorskip("peft")
    targets = "[self_attn.q,self_attn.k,self_attn.v,self_attn.o,cross_attn.q,cross_attn.k,cross_attn.v,cross_attn.o,cross_attn.k_img,cross_attn.v_img,ffn.0,ffn.2]"
    cfg = config("steps=6", f"lora.targets={targets}", "lora.alpha=4.0", "checkpoints.every=0")
    trainer = Trainer(cfg, tmp_path, WORLD)
    trainer.fit()
    path = trainer.export()

    base = base_weights(config())
    ref = diffusers.ChronoEditTransformer3DModel(**config_to_diffusers(base.config)).eval()
    ref.load_state_dict(OURS_TO_DIFFUSERS.convert({k: v.clone() for k, v in base.tensors.items()}))
    pipe = diffusers.ChronoEditPipeline(
        tokenizer=None, text_encoder=None, image_encoder=None, image_processor=None, transformer=ref, vae=None,
        scheduler=None,
    )  # fmt: skip
    pipe.load_lora_weights(str(path), adapter_name="trained")
    ours = trainer.model.eval()  # the trained adapters, at run time
    fused = base_weights(config())
    from chronoedit.models.dit import ChronoEditDiT

    ours_fused = ChronoEditDiT(fused.config)
    ours_fused.load_state_dict(fused.tensors)
    fuse_lora(ours_fused, [(read_lora(path)[0], 1.0)])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 36, 2, 4, 6, generator=g)
    t = torch.tensor([900.0, 250.0])
    ctx, clip = torch.randn(2, 512, 32, generator=g), torch.randn(2, 5, 32, generator=g)
    with torch.no_grad():
        want = ref(x, t, ctx, clip, return_dict=False)[0]
        got, got_fused = ours(x, t, ctx, clip), ours_fused(x, t, ctx, clip)
        pipe.disable_lora()
        plain = ref(x, t, ctx, clip, return_dict=False)[0]
    err, err_fused = rel_err(got, want), rel_err(got_fused, want)
    print(f"diffusers load_lora_weights vs ours: rel err {err:.2e} (runtime adapters), {err_fused:.2e} (fused); "
          f"the LoRA moves the output by {rel_err(plain, want):.3f}")  # fmt: skip
    assert err <= 1e-5 and err_fused <= 1e-5
    assert rel_err(plain, want) > 1e-3  # the comparison is not vacuous


def _run(run_dir, *overrides: str, until: int | None = None) -> tuple[Trainer, list[dict]]:
    trainer = Trainer(config(*overrides), run_dir, WORLD)
    return trainer, trainer.fit(until)


RESUME = ("steps=6", "checkpoints.every=2", "ema.enabled=true", "ema.decay=0.9", "objective.text_dropout=0.3",
          "data.synthetic.videos=2", "data.video_ratio=0.5", "micro_batch_size=2", "log_every=1")  # fmt: skip


def test_resume_after_an_interruption_is_bit_identical(tmp_path):
    full, ref = _run(tmp_path / "a", *RESUME)
    # interrupted after step 3: the last checkpoint is step 2; step 3 was trained but never saved
    _run(tmp_path / "b", *RESUME, until=3)
    assert [c for c, _ in complete_checkpoints(tmp_path / "b")] == [2]
    resumed, rest = _run(tmp_path / "b", *RESUME, "resume=true")
    assert [r["step"] for r in rest] == [3, 4, 5, 6]
    for a, b in zip(ref[2:], rest):
        assert a["loss"] == b["loss"] and a["grad_norm"] == b["grad_norm"] and a["kind"] == b["kind"], (a, b)
    assert {r["kind"] for r in ref} == {"pair", "video"}
    for (name, p), q in zip(full.model.named_parameters(), resumed.model.parameters()):
        assert torch.equal(p, q), name
    for name, t in full.ema.shadow.items():
        assert torch.equal(t, resumed.ema.shadow[name]), name
    # the log reads as one run: step 3 of the interrupted run was replaced by the resumed one's
    assert [r["step"] for r in read_metrics(tmp_path / "b")] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in read_metrics(tmp_path / "b")] == [r["loss"] for r in ref]
    print(f"resume: steps 3-6 bit-identical ({len(rest)} losses, grad norms, all parameters, EMA)")


def test_checkpoints_are_atomic_and_the_run_folder_is_protected(tmp_path):
    run = tmp_path / "run"
    _run(run, "steps=4", "checkpoints.every=2", "checkpoints.keep=1")
    assert [s for s, _ in complete_checkpoints(run)] == [4]  # keep=1: the older one was removed
    # a save killed half-way leaves a .tmp folder (and a folder without trainer.json): never taken as the latest
    half = step_dir(run, 6).with_name("step_00000006.tmp")
    half.mkdir()
    (half / "__0_0.distcp").write_bytes(b"partial")
    step_dir(run, 8).mkdir()
    assert latest_checkpoint(run) == step_dir(run, 4)

    with pytest.raises(ValueError, match="not empty"):
        Trainer(config("steps=4"), run, WORLD)
    with pytest.raises(ValueError, match="no complete checkpoint"):
        Trainer(config("resume=true"), tmp_path / "empty", WORLD)
    with pytest.raises(ValueError, match=r"lora\.rank: 8 -> 16"):
        Trainer(config("steps=6", "checkpoints.keep=1", "lora.rank=16", "resume=true"), run, WORLD)
    with pytest.raises(ValueError, match=r"batch_size: 4 -> 8.*seed: 0 -> 1"):
        Trainer(config("steps=6", "batch_size=8", "seed=1", "resume=true"), run, WORLD)
    # allowed changes: more steps, another lr, logging, checkpoint cadence
    _, records = _run(run, "steps=6", "optim.lr=0.005", "checkpoints.every=1", "log_every=2", "resume=true")
    assert [r["step"] for r in records] == [5, 6] and records[0]["lr"] == 0.005

    (run / "notes.txt").write_text("mine")
    _run(run, "steps=2", "overwrite=true", "log_every=1")
    assert (run / "notes.txt").read_text() == "mine"  # only our own outputs are replaced
    assert [s for s, _ in complete_checkpoints(run)] == [2] and len(read_metrics(run)) == 2


def test_bf16_autocast_keeps_fp32_master_weights_and_islands(tmp_path):
    trainer, records = _run(tmp_path, "steps=2", "precision.compute=bfloat16", "precision.frozen=bfloat16")
    from chronoedit.models.dit import ChronoEditDiT

    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
    dtypes = {}
    for name, p in trainer.model.named_parameters():
        kind = "trainable" if p.requires_grad else "island" if ChronoEditDiT.keep_fp32(name) else "frozen"
        dtypes.setdefault(kind, set()).add(p.dtype)
        if p.requires_grad:
            assert p.grad is None  # zeroed (set to None) after the step
    assert dtypes == {"trainable": {torch.float32}, "island": {torch.float32}, "frozen": {torch.bfloat16}}


def test_every_experiment_and_debug_config_composes():
    for name in sorted(p.stem for p in (ROOT / "configs" / "experiment").glob("*.yaml")):
        extra = [] if name.startswith("tiny") else ["checkpoint=/ckpt", "data.cache=/data"]
        cfg = config(*extra, experiment=name)
        assert isinstance(cfg, TrainConfig)
    lora = config("checkpoint=/ckpt", "data.cache=/data", experiment="lora_14b")
    assert (lora.lora.rank, lora.optim.lr, lora.lora.targets) == (32, 1e-4, ["self_attn.q", "self_attn.k",
                                                                               "self_attn.v", "self_attn.o",
                                                                               "ffn.0", "ffn.2"])  # fmt: skip
    for debug in sorted(p.stem for p in (ROOT / "configs" / "debug").glob("*.yaml")):
        config(f"debug={debug}")
    with pytest.raises(Exception, match="lora_rank"):
        config("lora_rank=3")
    with pytest.raises(Exception, match=r"checkpoint is not set"):
        config("data.cache=/data", experiment="lora_14b")
    with pytest.raises(Exception, match="exactly one data source"):
        config("checkpoint=/ckpt", experiment="lora_14b")
    with pytest.raises(Exception, match="exactly one data source"):
        config("data.cache=/data")
    assert json.loads(json.dumps(config().__dict__, default=str))


def test_export_every_snapshots_the_ema_weights_along_the_run(tmp_path):
    """checkpoints.export_every=N (full training) writes exports/step_N… along the run — the EMA weights of that
    step as a loadable native checkpoint — so that success can be measured against training time."""
    from safetensors.torch import load_file

    from chronoedit.checkpoint.native import load_native_config

    cfg = config("mode=full", "steps=4", "checkpoints.every=0", "checkpoints.export_every=2", "ema.enabled=true",
                 "ema.decay=0.5", "optim.lr=3e-3")  # fmt: skip
    trainer = Trainer(cfg, tmp_path, WORLD)
    trainer.fit(until=2)
    at_two = {k: v.clone() for k, v in trainer.ema.shadow.items()}
    trainer.fit()
    final = trainer.export()
    snaps = sorted(p.name for p in (tmp_path / "exports").iterdir())
    assert snaps == ["step_000002"]  # the last step is the final export, not a snapshot
    snap = load_file(tmp_path / "exports" / "step_000002" / "dit.safetensors")
    last = load_file(final / "dit.safetensors")
    assert load_native_config(tmp_path / "exports" / "step_000002").configs.keys() >= {
        "dit",
        "vae",
    }  # a native checkpoint
    name = next(k for k in at_two if k in snap)
    assert torch.allclose(snap[name].float(), at_two[name].float().to(snap[name].dtype).float())
    assert not torch.equal(snap[name], last[name])  # it is the step-2 state, not the end of the run
