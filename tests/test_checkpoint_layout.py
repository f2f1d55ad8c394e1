"""A tiny random pipeline saved by diffusers' ``save_pretrained`` (DiT, text encoder and VAE sharded) loads
with our code, and every component matches the diffusers / transformers one loaded from the same folder.

Tolerances, fp32 relative error ‖ours − ref‖ / ‖ref‖: DiT, UMT5, CLIP ≤ 1e-5; VAE ≤ 1e-5 (moments and video);
CLIP preprocessing ≤ 1e-6; token ids and sampler defaults exact.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from chronoedit.checkpoint.dit import load_dit
from chronoedit.checkpoint.encoders import load_image_encoder, load_text_encoder
from chronoedit.checkpoint.resolve import resolve_checkpoint
from chronoedit.checkpoint.vae import load_vae
from chronoedit.models.clip import ImagePreprocessor
from chronoedit.models.text import Tokenizer
from chronoedit.sampling import SamplerConfig
from tests.fixtures_pipeline import FLOW_SHIFT, make_diffusers_pipeline_folder
from tests.helpers import rel_err

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

TOL = 1e-5


@pytest.fixture(scope="module")
def pipe_dir(tmp_path_factory):
    return make_diffusers_pipeline_folder(tmp_path_factory.mktemp("pipe"))


def test_layout_is_sharded_and_resolves(pipe_dir):
    for folder in ("transformer", "text_encoder", "vae"):
        assert any((pipe_dir / folder).glob("*.safetensors.index.json")), folder
        assert len(list((pipe_dir / folder).glob("*.safetensors"))) > 1, folder
    info = resolve_checkpoint(pipe_dir)
    assert info.kind == "diffusers" and info.root == pipe_dir
    assert info.dit == pipe_dir / "transformer" and info.text_encoder == pipe_dir / "text_encoder"
    assert info.tokenizer == pipe_dir / "tokenizer" and info.image_processor == pipe_dir / "image_processor"
    defaults = info.sampler()
    assert defaults == dict(name="unipc", shift=FLOW_SHIFT, order=2, solver_type="bh2", lower_order_final=True,
                            num_train_timesteps=1000)  # fmt: skip
    assert SamplerConfig(**defaults).shift == FLOW_SHIFT


def test_dit_matches_diffusers(pipe_dir):
    ref = diffusers.ChronoEditTransformer3DModel.from_pretrained(str(pipe_dir / "transformer")).eval()
    ours = load_dit(pipe_dir, dtype=torch.float32)  # the pipeline folder: its transformer/
    assert ours.cfg.num_layers == 2 and ours.cfg.dim == 24 and ours.cfg.image_dim == 32  # read, not assumed
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(1, 36, 2, 4, 6, generator=g), torch.tensor([321.0])
    text, clip = torch.randn(1, 512, 32, generator=g), torch.randn(1, 5, 32, generator=g)
    with torch.no_grad():
        want = ref(x, t, text, clip, return_dict=False)[0]
        got = ours(x, t, text, clip)
    assert rel_err(got, want) <= TOL


def test_wan_class_name_is_accepted(pipe_dir, tmp_path):
    import shutil

    shutil.copytree(pipe_dir / "transformer", tmp_path / "transformer")
    cfg = json.loads((tmp_path / "transformer" / "config.json").read_text())
    cfg["_class_name"] = "WanTransformer3DModel"
    (tmp_path / "transformer" / "config.json").write_text(json.dumps(cfg))
    ours = load_dit(tmp_path / "transformer", dtype=torch.float32)
    ref = load_dit(pipe_dir / "transformer", dtype=torch.float32)
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in ours.state_dict().items())


def test_text_encoder_and_tokenizer_match_transformers(pipe_dir):
    ref = transformers.UMT5EncoderModel.from_pretrained(str(pipe_dir / "text_encoder")).eval()
    ref_tok = transformers.AutoTokenizer.from_pretrained(str(pipe_dir / "tokenizer"))
    tok = Tokenizer.from_folder(pipe_dir / "tokenizer")
    ours = load_text_encoder(pipe_dir, dtype=torch.float32)
    prompts = ["turn the sky into a watercolor painting", "一只猫 🐱"]
    ids, mask = tok(prompts, max_length=24)
    want_ids = ref_tok(prompts, padding="max_length", max_length=24, truncation=True, return_tensors="pt")
    assert torch.equal(ids, want_ids.input_ids) and torch.equal(mask, want_ids.attention_mask)
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask).last_hidden_state
        got = ours(ids, mask)
    keep = mask.bool()
    assert rel_err(got[keep], want[keep]) <= TOL


def test_image_encoder_and_processor_match_transformers(pipe_dir):
    ref = transformers.CLIPVisionModelWithProjection.from_pretrained(str(pipe_dir / "image_encoder")).eval()
    ref_proc = transformers.CLIPImageProcessor.from_pretrained(str(pipe_dir / "image_processor"))
    proc = ImagePreprocessor.from_folder(pipe_dir / "image_processor")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8))
    pixels = torch.from_numpy(proc.process(image))[None]
    want_pixels = ref_proc(images=image, return_tensors="pt").pixel_values
    assert rel_err(pixels, want_pixels) <= 1e-6
    ours = load_image_encoder(pipe_dir / "image_encoder", dtype=torch.float32)
    with torch.no_grad():
        want = ref(want_pixels, output_hidden_states=True).hidden_states[-2]
        got = ours(pixels)
    assert got.shape == want.shape == (1, 5, 32)
    assert rel_err(got, want) <= TOL


def test_vae_matches_diffusers(pipe_dir):
    ref = diffusers.AutoencoderKLWan.from_pretrained(str(pipe_dir / "vae")).eval()
    ours = load_vae(pipe_dir)
    video = torch.rand(1, 3, 5, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        want = ref.encode(video).latent_dist.mean
        got = ours.encode_moments(video)[:, :16]
        assert rel_err(got, want) <= TOL
        want_video = ref.decode(want).sample
        got_video = ours.decode_raw(want)
    assert rel_err(got_video, want_video) <= TOL
