"""A tiny random ChronoEdit pipeline saved with diffusers' ``save_pretrained``: the diffusers layout on disk.

``make_diffusers_pipeline_folder(path)`` builds every component small (DiT width 24, UMT5 width 32, CLIP width
32 on 28² images, VAE base 8 — our ``tiny`` VAE preset), gives every parameter random values (norm weights
around 1, biases non-zero: a key-map mistake cannot hide), and saves the pipeline with a small
``max_shard_size`` so that the transformer and the text encoder are sharded. Takes a few seconds.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tests.fixtures_text import make_test_tokenizer_folder
from tests.helpers import randomize_

TOKENIZER_VOCAB = 700  # sentencepiece pieces; + 100 sentinels = 800 ids
DIT = dict(
    patch_size=[1, 2, 2], num_attention_heads=2, attention_head_dim=12, in_channels=36, out_channels=16,
    text_dim=32, freq_dim=16, ffn_dim=48, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
    eps=1e-6, image_dim=32, added_kv_proj_dim=24, rope_max_seq_len=1024,
)  # fmt: skip
VAE = dict(base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1, attn_scales=[],
           temperal_downsample=[False, True, True])  # fmt: skip
UMT5 = dict(vocab_size=TOKENIZER_VOCAB + 100, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
            relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
            layer_norm_epsilon=1e-6)  # fmt: skip
CLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, image_size=28,
            patch_size=14, projection_dim=16, hidden_act="gelu", layer_norm_eps=1e-5)  # fmt: skip
FLOW_SHIFT = 5.0


def make_diffusers_components(seed: int = 0, sizes: dict[str, dict] | None = None) -> dict:
    """The pipeline's components (random, eval mode), keyed by ``ChronoEditPipeline`` argument name. ``sizes``:
    constructor arguments replacing the tiny ones, per ``"dit" | "vae" | "umt5" | "clip"`` (e.g. for benchmarks)."""
    import diffusers
    import transformers

    sizes = sizes or {}
    DIT, VAE, UMT5, CLIP = ({**d, **sizes.get(k, {})} for k, d in
                            (("dit", globals()["DIT"]), ("vae", globals()["VAE"]), ("umt5", globals()["UMT5"]),
                             ("clip", globals()["CLIP"])))  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = randomize_(diffusers.ChronoEditTransformer3DModel(**DIT), seed)
        vae = randomize_(diffusers.AutoencoderKLWan(**VAE), seed + 1)
        text_encoder = randomize_(transformers.UMT5EncoderModel(transformers.UMT5Config(**UMT5)), seed + 2)
        image_encoder = transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(**CLIP))
        randomize_(image_encoder, seed + 3)
    processor = transformers.CLIPImageProcessor(
        size={"shortest_edge": CLIP["image_size"]}, crop_size={"height": CLIP["image_size"], "width": CLIP["image_size"]},
        do_center_crop=True, resample=3,
    )  # fmt: skip
    scheduler = diffusers.UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=FLOW_SHIFT, num_train_timesteps=1000,
        solver_order=2, solver_type="bh2",
    )  # fmt: skip
    return dict(
        transformer=transformer.eval(), vae=vae.eval(), text_encoder=text_encoder.eval(),
        image_encoder=image_encoder.eval(), image_processor=processor, scheduler=scheduler,
    )  # fmt: skip


def make_diffusers_pipeline_folder(
    path: str | Path, *, max_shard_size: str = "40KB", seed: int = 0, sizes: dict[str, dict] | None = None
) -> Path:
    """Save a tiny random ``ChronoEditPipeline`` to ``path`` (created) and return it (``sizes``: see
    :func:`make_diffusers_components`)."""
    import diffusers
    from transformers import AutoTokenizer

    path = Path(path)
    tok_dir = make_test_tokenizer_folder(path / "_tokenizer_src")
    components = make_diffusers_components(seed, sizes)
    pipe = diffusers.ChronoEditPipeline(tokenizer=AutoTokenizer.from_pretrained(str(tok_dir)), **components)
    pipe.save_pretrained(str(path), max_shard_size=max_shard_size)
    for f in tok_dir.iterdir():
        f.unlink()
    tok_dir.rmdir()
    return path


__all__ = ["make_diffusers_components", "make_diffusers_pipeline_folder"]
