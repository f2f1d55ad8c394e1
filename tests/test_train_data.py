"""Training data: the deterministic batch plan, the pre-encoding tool (dataset folder -> cache), corrupt inputs
skipped and counted, and the cache read back into a training run."""

from __future__ import annotations

import json
import logging
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from chronoedit.pipeline.condition import check_num_frames
from chronoedit.training.config import DataConfig, TrainConfig
from chronoedit.training.data import CACHE_INDEX, EMPTY_PROMPT, BatchPlanner, CacheSource, rank_slots, step_kind
from chronoedit.training.distributed import init_world
from chronoedit.training.preencode import Encoders, clip_video, preencode, read_metadata, trim_context
from chronoedit.training.preencode_config import PreencodeConfig
from chronoedit.training.trainer import Trainer

DIM = 32  # text and image widths of the tiny DiT


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# ---------------------------------------------------------------------------------------------- the batch plan
def test_every_epoch_visits_every_example_once_and_the_plan_resumes_exactly():
    cfg = DataConfig(seed=4)
    planner = BatchPlanner(cfg, {"pair": 10, "video": 0}, batch_size=5)
    plans = [planner.next(s) for s in range(1, 9)]  # 4 epochs
    for e in range(4):
        seen = plans[2 * e].indices + plans[2 * e + 1].indices
        assert sorted(seen) == list(range(10))
    orders = [tuple(plans[2 * e].indices + plans[2 * e + 1].indices) for e in range(4)]
    assert len(set(orders)) == 4  # reshuffled each epoch
    # a planner restored from the state after step 3 continues exactly
    again = BatchPlanner(cfg, {"pair": 10, "video": 0}, batch_size=5)
    for s in range(1, 4):
        again.next(s)
    state = json.loads(json.dumps(again.state_dict()))
    fresh = BatchPlanner(cfg, {"pair": 10, "video": 0}, batch_size=5)
    fresh.load_state_dict(state)
    assert [fresh.next(s).indices for s in range(4, 9)] == [p.indices for p in plans[3:]]
    with pytest.raises(ValueError, match="dataset changed"):
        BatchPlanner(cfg, {"pair": 11, "video": 0}, batch_size=5).load_state_dict(state)


def test_video_ratio_and_rank_slots():
    cfg = DataConfig(video_ratio=0.3, seed=1)
    kinds = Counter(step_kind(cfg, s) for s in range(1, 3001))
    assert abs(kinds["video"] / 3000 - 0.3) < 0.03
    assert step_kind(DataConfig(video_ratio=1.0), 5) == "video" and step_kind(DataConfig(), 5) == "pair"
    with pytest.raises(ValueError, match="needs \\['video'\\]"):
        BatchPlanner(cfg, {"pair": 4, "video": 0}, 2)
    slots = [list(rank_slots(8, r, 4)) for r in range(4)]
    assert [s for r in slots for s in r] == list(range(8))


# ---------------------------------------------------------------------------------------------- pre-encoding
class FakeEncoders:
    """Deterministic stand-ins with the real interfaces: an 8× average-pool 'VAE' with the causal 1 + 4k frame
    grouping, and prompt/image embeddings of width 32."""

    def __init__(self) -> None:
        self.proj = torch.randn(16, 3, generator=torch.Generator().manual_seed(0))
        self.calls = 0

    def video(self, v: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        t = check_num_frames(v.shape[2])  # v: (B, 3, F, H, W)
        pooled = torch.nn.functional.avg_pool3d(v, (1, 8, 8))  # (B, 3, F, h, w)
        groups = [pooled[:, :, :1]] + [pooled[:, :, 1 + 4 * i : 5 + 4 * i].mean(2, keepdim=True) for i in range(t - 1)]
        return torch.einsum("oc,bcfhw->bofhw", self.proj, torch.cat(groups, dim=2))

    def text(self, prompts: list[str]) -> torch.Tensor:
        out = torch.zeros(len(prompts), 512, DIM)
        for i, p in enumerate(prompts):
            n = len(p.split()) + 1  # the words and EOS
            g = torch.Generator().manual_seed(sum(map(ord, p)))
            out[i, :n] = torch.randn(n, DIM, generator=g)
        return out

    def image(self, im: Image.Image) -> torch.Tensor:
        mean = torch.tensor(np.asarray(im, dtype=np.float32).mean(axis=(0, 1)) / 255.0)
        return mean.repeat(5, DIM // 3 + 1)[None, :, :DIM]

    def encoders(self) -> Encoders:
        return Encoders(self.video, self.text, self.image)


def _image(path, seed: int, size=(48, 32)) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def make_dataset(root, corrupt: bool = True):
    """3 good pairs (one with an oversized input, cropped), 1 video clip of 7 frames, and, with ``corrupt``, an
    undecodable PNG and a truncated one."""
    (root / "in").mkdir(parents=True)
    (root / "out").mkdir()
    rows = []
    for i in range(3):
        _image(root / "in" / f"{i}.png", i, size=(96, 40) if i == 0 else (48, 32))
        _image(root / "out" / f"{i}.png", 10 + i)
        rows.append({"input": f"in/{i}.png", "output": f"out/{i}.png", "prompt": f"edit number {i}"})
    clip = root / "clips" / "c0"
    clip.mkdir(parents=True)
    for k in range(7):
        _image(clip / f"{k:03d}.png", 100 + k)
    rows.append({"input": "clips/c0/000.png", "output": "clips/c0", "prompt": "a door opens"})
    if corrupt:
        (root / "in" / "bad.png").write_bytes(b"this is not a PNG")
        _image(root / "in" / "cut.png", 7)
        data = (root / "in" / "cut.png").read_bytes()
        (root / "in" / "cut.png").write_bytes(data[: len(data) // 2])
        rows.insert(1, {"input": "in/bad.png", "output": "out/0.png", "prompt": "broken"})
        rows.insert(3, {"input": "in/cut.png", "output": "out/1.png", "prompt": "truncated"})
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def test_preencode_writes_the_cache_and_skips_corrupt_images_with_a_count(tmp_path, caplog):
    make_dataset(tmp_path / "data")
    enc = FakeEncoders()
    cfg = PreencodeConfig(dataset=str(tmp_path / "data"), output=str(tmp_path / "cache"), height=32, width=48,
                          clip_frames=5)  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="chronoedit.training"):
        meta = preencode(cfg, enc.encoders())
    assert meta["skipped"] == 2 and meta["counts"] == {"pair": 3, "video": 1}
    assert [r["line"] for r in meta["skipped_rows"]] == [2, 4]
    warnings = [r.getMessage() for r in caplog.records if "skipping row" in r.getMessage()]
    assert len(warnings) == 2 and warnings[-1].endswith("[2 skipped so far]")
    rows = [json.loads(line) for line in (tmp_path / "cache" / CACHE_INDEX).read_text().splitlines()]
    assert [r["kind"] for r in rows] == ["pair", "pair", "pair", "video"]

    src = CacheSource(tmp_path / "cache", text_dim=DIM, image_dim=DIM)
    assert src.counts == {"pair": 3, "video": 1} and src.skipped == 0
    pair, video = src.load("pair", 1), src.load("video", 0)
    assert pair.latents.shape == (16, 2, 4, 6) and video.latents.shape == (16, 3, 4, 6)  # 5 + 4 frames -> 3
    assert pair.context.shape == (4, DIM)  # "edit number 1" + EOS: the zero padding is not stored
    assert torch.equal(pair.latents[:, :1], pair.cond_latents[:, :1])  # the causal first latent is the input's
    assert pair.cond_latents[:, 1:].abs().max() == 0  # the fake VAE maps black frames to 0
    assert src.empty_context.shape == (1, DIM)
    assert (tmp_path / "cache" / EMPTY_PROMPT).is_file()

    # a corrupt cache file is skipped the same way when training opens the cache
    victim = tmp_path / "cache" / rows[0]["file"]
    victim.write_bytes(victim.read_bytes()[:-100])
    with caplog.at_level(logging.WARNING, logger="chronoedit.training"):
        src = CacheSource(tmp_path / "cache", text_dim=DIM, image_dim=DIM)
    assert src.skipped == 1 and src.counts == {"pair": 2, "video": 1}
    assert any("truncated" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError, match="text_dim=64"):
        CacheSource(tmp_path / "cache", text_dim=64, image_dim=DIM)


def test_a_cache_trains_with_pairs_and_clips_mixed(tmp_path):
    make_dataset(tmp_path / "data", corrupt=False)
    cfg = PreencodeConfig(dataset=str(tmp_path / "data"), output=str(tmp_path / "cache"), height=32, width=48,
                          clip_frames=5)  # fmt: skip
    preencode(cfg, FakeEncoders().encoders())
    tc = TrainConfig(steps=4, batch_size=2, micro_batch_size=1, log_every=1)
    tc.data.cache, tc.data.synthetic, tc.data.video_ratio = str(tmp_path / "cache"), None, 0.5
    tc.objective.text_dropout = 0.5
    tc.precision.compute = tc.precision.frozen = "float32"
    tc.checkpoints.every = 0
    tc.lora.rank = 4
    trainer = Trainer(tc, tmp_path / "run", init_world("cpu"))
    records = trainer.fit()
    assert {r["kind"] for r in records} == {"pair", "video"}
    assert all(np.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in records)


def test_metadata_errors_name_the_line_and_clips_are_sampled_evenly(tmp_path):
    (tmp_path / "metadata.jsonl").write_text('{"input": "a.png", "output": "b.png", "prompt": "x"}\n{"input": "a"}\n')
    with pytest.raises(ValueError, match=r"metadata.jsonl:2: each row needs"):
        read_metadata(tmp_path)
    (tmp_path / "metadata.jsonl").unlink()
    (tmp_path / "metadata.csv").write_text("input,output,prompt\na.png,b.png,make it red\n")
    (row,) = read_metadata(tmp_path)
    assert row.prompt == "make it red" and row.output.name == "b.png" and not row.is_video
    with pytest.raises(ValueError, match="no metadata"):
        read_metadata(tmp_path / "nowhere")
    frames = [Image.new("RGB", (8, 8), (i, 0, 0)) for i in range(49)]
    first = Image.new("RGB", (8, 8), (255, 255, 255))
    video = clip_video(frames, first, 25)
    assert len(video) == 29 and check_num_frames(len(video)) == 8  # 25 frames + the edit × 4 -> 8 latent frames
    assert video[0] is first and [f.getpixel((0, 0))[0] for f in video[1:4]] == [2, 4, 6]
    assert all(f.getpixel((0, 0))[0] == 48 for f in video[25:])
    ctx = torch.zeros(512, 4)
    ctx[:7] = 1.0
    assert trim_context(ctx).shape == (7, 4)


def test_preencode_with_the_tiny_encoders_gives_the_inference_condition(tmp_path):
    """Through the real (tiny) VAE, UMT5 and CLIP: the stored condition latents are exactly what the edit
    pipeline conditions on for the same image, and the text is the pipeline's prompt embedding."""
    from chronoedit.pipeline.components import tiny_components
    from chronoedit.pipeline.images import load_image
    from chronoedit.pipeline.pipeline import EditPipeline
    from chronoedit.training.preencode import encoders_from_components, fit_image

    (tmp_path / "data").mkdir()
    _image(tmp_path / "data" / "a.png", 1, size=(64, 48))
    _image(tmp_path / "data" / "b.png", 2, size=(64, 48))
    row = {"input": "a.png", "output": "b.png", "prompt": "Add a hat"}
    (tmp_path / "data" / "metadata.jsonl").write_text(json.dumps(row) + "\n")
    comps = tiny_components(0)
    cfg = PreencodeConfig(dataset=str(tmp_path / "data"), output=str(tmp_path / "cache"), height=48, width=64)
    with torch.no_grad():
        preencode(cfg, encoders_from_components(comps, torch.device("cpu"), torch.float32))
    ex = CacheSource(tmp_path / "cache", text_dim=DIM, image_dim=DIM).load("pair", 0)
    pipe = EditPipeline(comps, progress=False)
    image = fit_image(load_image(tmp_path / "data" / "a.png"), 48, 64)
    assert torch.equal(ex.cond_latents[None], pipe.encode_condition(image, 48, 64, 5)[:, 4:])
    emb, lens = pipe.encode_text(["Add a hat"])
    text = emb[0]
    assert lens.tolist() == [ex.context.shape[0]]
    assert torch.equal(ex.context, text[: ex.context.shape[0]]) and text[ex.context.shape[0] :].abs().max() == 0
    assert torch.equal(ex.clip[None], pipe.encode_image(image))
    assert ex.latents.shape == (16, 2, 6, 8) and torch.equal(ex.latents[:, 0], ex.cond_latents[:, 0])


def test_preencode_in_batches_writes_the_same_cache(tmp_path):
    """batch=3: rows read together and encoded per frame count (pairs and the clip apart), written in row order,
    skipped rows still counted — the same files as one row at a time."""
    make_dataset(tmp_path / "data")
    caches = {}
    for batch in (1, 3):
        out = tmp_path / f"cache{batch}"
        cfg = PreencodeConfig(dataset=str(tmp_path / "data"), output=str(out), height=32, width=48, clip_frames=5,
                              batch=batch)  # fmt: skip
        enc = FakeEncoders()
        meta = preencode(cfg, enc.encoders())
        assert meta["skipped"] == 2
        caches[batch] = (out, enc.calls)
    (one, calls_one), (three, calls_three) = caches[1], caches[3]
    assert (one / CACHE_INDEX).read_text() == (three / CACHE_INDEX).read_text()
    assert calls_three < calls_one
    from safetensors.torch import load_file

    for row in (json.loads(line) for line in (one / CACHE_INDEX).read_text().splitlines()):
        x, y = load_file(one / row["file"]), load_file(three / row["file"])
        assert x.keys() == y.keys() and all(torch.allclose(x[k], y[k], atol=1e-6) for k in x)
    with pytest.raises(ValueError, match="batch=0"):
        PreencodeConfig(dataset="d", output="o", batch=0)
