"""Files users already have (ComfyUI's ChronoEdit set, Wan-AI's .pth files, GGUF DiTs), end to end.

Tiny stand-ins of each file are written from a diffusers-layout test pipeline with key maps written HERE (not the
library's): the DiT in Wan naming with ComfyUI's ``model.diffusion_model.`` prefix and head dim 12 (not 128), the
VAE under a ``vae.`` prefix, UMT5 in transformers naming as fp8 "scaled" with the tokenizer embedded as
``spiece_model``, and CLIP vision in open-clip naming (fused q/k/v). An edit from (a) a loose folder, (b)
per-component overrides on the diffusers folder and (c) the converted native folder must match diffusers'
``ChronoEditPipeline`` on the same weights (the fp8 text encoder's dequantised): frames within 1.5/255, latents within
1e-3 of their std.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from chronoedit.checkpoint.errors import CheckpointError
from chronoedit.checkpoint.safetensors_io import save_file
from chronoedit.pipeline import EditPipeline, EditRequest
from chronoedit.pipeline.components import load_components
from chronoedit.sampling import SamplerConfig

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")

FRAME_TOL = 1.5 / 255
LATENT_TOL = 1e-3
H, W = 32, 48
PROMPT = "Turn the house into a castle"
# what single files' shapes cannot tell: head counts (head dims 12 and 16), the VAE's (not the released one's) size
HEADS = {"dit.num_heads": 2, "image_encoder.num_heads": 2, "vae.base_dim": 8, "vae.num_res_blocks": 1}

# ------------------------------------------------------------------ key maps of the test (diffusers -> other namings)

DIT_TO_WAN = [  # (regex on the diffusers name, replacement): ComfyUI / original Wan naming
    (r"condition_embedder\.text_embedder\.linear_1", "text_embedding.0"),
    (r"condition_embedder\.text_embedder\.linear_2", "text_embedding.2"),
    (r"condition_embedder\.time_embedder\.linear_1", "time_embedding.0"),
    (r"condition_embedder\.time_embedder\.linear_2", "time_embedding.2"),
    (r"condition_embedder\.time_proj", "time_projection.1"),
    (r"condition_embedder\.image_embedder\.norm1", "img_emb.proj.0"),
    (r"condition_embedder\.image_embedder\.ff\.net\.0\.proj", "img_emb.proj.1"),
    (r"condition_embedder\.image_embedder\.ff\.net\.2", "img_emb.proj.3"),
    (r"condition_embedder\.image_embedder\.norm2", "img_emb.proj.4"),
    (r"\.attn1\.to_q\.", ".self_attn.q."),
    (r"\.attn1\.to_k\.", ".self_attn.k."),
    (r"\.attn1\.to_v\.", ".self_attn.v."),
    (r"\.attn1\.to_out\.0\.", ".self_attn.o."),
    (r"\.attn1\.norm_q\.", ".self_attn.norm_q."),
    (r"\.attn1\.norm_k\.", ".self_attn.norm_k."),
    (r"\.attn2\.to_q\.", ".cross_attn.q."),
    (r"\.attn2\.to_k\.", ".cross_attn.k."),
    (r"\.attn2\.to_v\.", ".cross_attn.v."),
    (r"\.attn2\.to_out\.0\.", ".cross_attn.o."),
    (r"\.attn2\.norm_q\.", ".cross_attn.norm_q."),
    (r"\.attn2\.norm_k\.", ".cross_attn.norm_k."),
    (r"\.attn2\.add_k_proj\.", ".cross_attn.k_img."),
    (r"\.attn2\.add_v_proj\.", ".cross_attn.v_img."),
    (r"\.attn2\.norm_added_k\.", ".cross_attn.norm_k_img."),
    (r"^(blocks\.\d+)\.norm2\.", r"\1.norm3."),
    (r"\.ffn\.net\.0\.proj\.", ".ffn.0."),
    (r"\.ffn\.net\.2\.", ".ffn.2."),
    (r"^(blocks\.\d+)\.scale_shift_table$", r"\1.modulation"),
    (r"^proj_out\.", "head.head."),
    (r"^scale_shift_table$", "head.modulation"),
]
CLIP_TO_OPEN_CLIP = [  # transformers -> open-clip (q/k/v fused below)
    (r"^vision_model\.embeddings\.patch_embedding\.weight$", "visual.conv1.weight"),
    (r"^vision_model\.embeddings\.class_embedding$", "visual.class_embedding"),
    (r"^vision_model\.embeddings\.position_embedding\.weight$", "visual.positional_embedding"),
    (r"^vision_model\.pre_layrnorm\.", "visual.ln_pre."),
    (r"^vision_model\.post_layernorm\.", "visual.ln_post."),
    (r"^vision_model\.encoder\.layers\.(\d+)\.layer_norm1\.", r"visual.transformer.resblocks.\1.ln_1."),
    (r"^vision_model\.encoder\.layers\.(\d+)\.layer_norm2\.", r"visual.transformer.resblocks.\1.ln_2."),
    (
        r"^vision_model\.encoder\.layers\.(\d+)\.self_attn\.out_proj\.",
        r"visual.transformer.resblocks.\1.attn.out_proj.",
    ),
    (r"^vision_model\.encoder\.layers\.(\d+)\.mlp\.fc1\.", r"visual.transformer.resblocks.\1.mlp.c_fc."),
    (r"^vision_model\.encoder\.layers\.(\d+)\.mlp\.fc2\.", r"visual.transformer.resblocks.\1.mlp.c_proj."),
]
CLIP_TO_WAN = [  # transformers -> Wan's models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth (q/k/v fused below)
    (r"^vision_model\.embeddings\.patch_embedding\.weight$", "visual.patch_embedding.weight"),
    (r"^vision_model\.pre_layrnorm\.", "visual.pre_norm."),
    (r"^vision_model\.post_layernorm\.", "visual.post_norm."),
    (r"^vision_model\.encoder\.layers\.(\d+)\.layer_norm1\.", r"visual.transformer.\1.norm1."),
    (r"^vision_model\.encoder\.layers\.(\d+)\.layer_norm2\.", r"visual.transformer.\1.norm2."),
    (r"^vision_model\.encoder\.layers\.(\d+)\.self_attn\.out_proj\.", r"visual.transformer.\1.attn.proj."),
    (r"^vision_model\.encoder\.layers\.(\d+)\.mlp\.fc1\.", r"visual.transformer.\1.mlp.0."),
    (r"^vision_model\.encoder\.layers\.(\d+)\.mlp\.fc2\.", r"visual.transformer.\1.mlp.2."),
]


def rename(state: dict, rules: list[tuple[str, str]]) -> dict:
    out = {}
    for key, value in state.items():
        new = key
        for pattern, repl in rules:
            new = re.sub(pattern, repl, new)
        out[new] = value
    return out


def fuse_qkv(state: dict, fused: str) -> dict:
    """transformers' separate q/k/v projections -> one fused tensor per block (``fused`` with {n}, {p})."""
    out = {k: v for k, v in state.items() if not re.search(r"self_attn\.[qkv]_proj\.", k)}
    layers = {int(m.group(1)) for k in state if (m := re.match(r"vision_model\.encoder\.layers\.(\d+)\.", k))}
    for n in layers:
        for p in ("weight", "bias"):
            parts = [state[f"vision_model.encoder.layers.{n}.self_attn.{x}_proj.{p}"] for x in "qkv"]
            out[fused.format(n=n, p=p)] = torch.cat(parts)
    return out


def quantize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scale = w.abs().max().float() / torch.finfo(torch.float8_e4m3fn).max
    return (w.float() / scale).to(torch.float8_e4m3fn), scale


def dequantized_umt5(state: dict, *, legacy: bool = True) -> tuple[dict, dict]:
    """(ComfyUI fp8-scaled file tensors, the same weights dequantised): block linears in fp8 with scales."""
    stored, plain = {}, {}
    for k, v in state.items():
        if k == "encoder.embed_tokens.weight":
            continue  # tied to shared.weight; ComfyUI keeps one
        if v.ndim == 2 and ".block." in k and k.endswith(".weight") and "relative_attention_bias" not in k:
            q, s = quantize(v)
            stored[k] = q
            if legacy:
                stored[k.removesuffix(".weight") + ".scale_weight"] = s
            else:
                stored[k.removesuffix(".weight") + ".weight_scale"] = s
                conf = json.dumps({"format": "float8_e4m3fn"}).encode()
                stored[k.removesuffix(".weight") + ".comfy_quant"] = torch.tensor(list(conf), dtype=torch.uint8)
            plain[k] = q.float() * s
        else:
            stored[k] = v
            plain[k] = v
    if legacy:
        stored["scaled_fp8"] = torch.empty(2, dtype=torch.float8_e4m3fn)
    return stored, plain


def cpu_state(module) -> dict:
    return {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def pipe_dir(tmp_path_factory):
    from tests.fixtures_pipeline import make_diffusers_pipeline_folder

    return make_diffusers_pipeline_folder(tmp_path_factory.mktemp("pipe"))


@pytest.fixture(scope="module")
def reference(pipe_dir):
    return diffusers.ChronoEditPipeline.from_pretrained(str(pipe_dir), torch_dtype=torch.float32)


@pytest.fixture(scope="module")
def loose(pipe_dir, reference, tmp_path_factory):
    """ComfyUI-style loose files (names that say nothing) and the reference's text encoder set to the fp8
    weights dequantised."""
    folder = tmp_path_factory.mktemp("comfy")
    dit = rename(cpu_state(reference.transformer), DIT_TO_WAN)
    save_file({f"model.diffusion_model.{k}": v for k, v in dit.items()}, folder / "a.safetensors")
    save_file({f"vae.{k}": v for k, v in cpu_state(reference.vae).items()}, folder / "b.safetensors")
    stored, plain = dequantized_umt5(cpu_state(reference.text_encoder))
    from tests.fixtures_text import make_test_tokenizer_folder

    spiece = (make_test_tokenizer_folder(tmp_path_factory.mktemp("tok")) / "spiece.model").read_bytes()
    stored["spiece_model"] = torch.tensor(list(spiece), dtype=torch.uint8)
    save_file(stored, folder / "c.safetensors")
    clip = cpu_state(reference.image_encoder)
    clip = fuse_qkv(clip, "visual.transformer.resblocks.{n}.attn.in_proj_{p}")
    clip = rename(clip, CLIP_TO_OPEN_CLIP)
    clip["visual.proj"] = clip.pop("visual_projection.weight").T.contiguous()
    save_file(clip, folder / "d.safetensors")
    (folder / "notes.txt").write_text("not weights: ignored")
    with torch.no_grad():
        for k, p in reference.text_encoder.named_parameters():
            if k in plain:
                p.copy_(plain[k])
    reference.text_encoder.encoder.embed_tokens.weight = reference.text_encoder.shared.weight
    return folder


@pytest.fixture(scope="module")
def image():
    g = torch.Generator().manual_seed(3)
    base = torch.rand(3, H // 8, W // 8, generator=g)
    big = torch.nn.functional.interpolate(base[None], size=(H, W), mode="bilinear")[0]
    from PIL import Image

    return Image.fromarray((big.permute(1, 2, 0).numpy() * 255).round().astype("uint8"))


@pytest.fixture(scope="module")
def expected(reference, loose, image):
    pipe = reference
    pipe.scheduler = diffusers.UniPCMultistepScheduler.from_config(pipe.scheduler.config, flow_shift=5.0)
    final = {}

    def keep(_pipe, i, t, kw):
        final["latents"] = kw["latents"].clone()
        return kw

    frames = pipe(
        image=image, prompt=PROMPT, negative_prompt="", height=H, width=W, num_frames=5, num_inference_steps=3,
        guidance_scale=5.0, generator=torch.Generator("cpu").manual_seed(7), output_type="np",
        callback_on_step_end=keep,
    ).frames[0]  # fmt: skip
    return torch.from_numpy(frames).permute(0, 3, 1, 2), final["latents"]


def check_edit(components, image, expected):
    ours = EditPipeline(components, dtype=torch.float32, progress=False)
    request = EditRequest(image=image, prompt=PROMPT, negative_prompt="", seed=7, guidance_scale=5.0, height=H, width=W)
    got = ours(request, SamplerConfig(name="unipc", steps=3, shift=5.0, order=2))
    want_frames, want_latents = expected
    assert got.video.shape == want_frames.shape
    frame_err = (got.video - want_frames).abs().max()
    assert frame_err <= FRAME_TOL, f"frame error {frame_err * 255:.3f}/255"
    latent_err = (got.latents - want_latents).abs().max() / want_latents.std()
    assert latent_err <= LATENT_TOL, f"latent error {latent_err:.2e} of their std"


# ------------------------------------------------------------------ end to end


def test_edit_from_loose_folder(loose, image, expected):
    components = load_components(str(loose), dtype=torch.float32, overrides=HEADS)
    assert "loose layout" in components.source and "built-in defaults" in components.source
    assert "tokenizer embedded in c.safetensors" in components.source
    assert components.default_sampler.shift == 5.0 and components.default_sampler.name == "unipc"
    check_edit(components, image, expected)


def test_edit_from_component_overrides(pipe_dir, loose, image, expected):
    files = {"dit": str(loose / "a.safetensors"), "text_encoder": str(loose / "c.safetensors")}
    components = load_components(str(pipe_dir), dtype=torch.float32, overrides=HEADS, files=files)
    assert "components.dit=" in components.source
    check_edit(components, image, expected)
    # every part given on its own, no checkpoint at all
    files |= {"vae": str(loose / "b.safetensors"), "image_encoder": str(loose / "d.safetensors")}
    components = load_components("tiny", dtype=torch.float32, overrides=HEADS, files=files)
    check_edit(components, image, expected)


def test_edit_from_converted_native(loose, tmp_path, image, expected):
    from tools.convert import main

    out = tmp_path / "native"
    fields = [a for k, v in HEADS.items() for a in ("--model", f"{k}={v}")]
    assert main([str(loose), str(out), *fields]) == 0
    assert (out / "tokenizer" / "spiece.model").is_file() and (out / "scheduler" / "scheduler_config.json").is_file()
    components = load_components(str(out), dtype=torch.float32)
    check_edit(components, image, expected)


# ------------------------------------------------------------------ formats on their own


def test_umt5_fp8_both_conventions_match_dequantised(pipe_dir, tmp_path):
    import transformers

    from chronoedit.checkpoint.keymaps.umt5 import TRANSFORMERS_TO_OURS, untie_embedding
    from chronoedit.checkpoint.registry import load, open_component

    state = cpu_state(transformers.UMT5EncoderModel.from_pretrained(str(pipe_dir / "text_encoder")))  # as saved
    for legacy in (True, False):
        stored, plain = dequantized_umt5(state, legacy=legacy)
        path = tmp_path / f"umt5_{legacy}.safetensors"
        save_file(stored, path)
        src = open_component(path, "text_encoder")
        assert "fp8" in src.describe
        model = load(src, dtype=torch.float32)
        q = "encoder.block.0.layer.0.SelfAttention.q.weight"
        assert (plain[q] - state[q]).abs().max() > 1e-4  # fp8 changes the weights: the edit tests see it
        want = TRANSFORMERS_TO_OURS.convert(untie_embedding(plain))
        got = model.state_dict()
        assert set(got) == set(want)
        for k in want:
            torch.testing.assert_close(got[k], want[k].float(), rtol=0, atol=0, msg=k)


def test_clip_wan_naming_matches_transformers(reference, pipe_dir, tmp_path):
    from chronoedit.checkpoint.registry import load, open_component

    state = cpu_state(reference.image_encoder)
    wan = fuse_qkv(state, "visual.transformer.{n}.attn.to_qkv.{p}")
    wan = rename(wan, CLIP_TO_WAN)
    wan["visual.cls_embedding"] = wan.pop("vision_model.embeddings.class_embedding").view(1, 1, -1)
    wan["visual.pos_embedding"] = wan.pop("vision_model.embeddings.position_embedding.weight")[None]
    wan["visual.head"] = wan.pop("visual_projection.weight").T.contiguous()
    wan["textual.token_embedding.weight"] = torch.zeros(4, 8)  # the text tower: ignored by declaration
    path = tmp_path / "models_clip.pth"
    torch.save(wan, path)
    with pytest.raises(CheckpointError, match=r"models_clip\.pth.*model\.image_encoder\.num_heads"):
        open_component(path, "image_encoder")
    ours = load(open_component(path, "image_encoder", hints={"num_heads": 2}), dtype=torch.float32)
    want = load(open_component(pipe_dir, "image_encoder"), dtype=torch.float32)
    pixels = torch.randn(1, 3, 28, 28)
    torch.testing.assert_close(ours(pixels), want(pixels), rtol=0, atol=0)


def test_dit_head_count_is_asked_for(loose):
    from chronoedit.checkpoint.architecture import open_model

    with pytest.raises(CheckpointError, match=r"a\.safetensors.*model\.dit\.num_heads=") as e:
        open_model(str(loose), {"image_encoder.num_heads": 2})
    assert "\n" not in str(e.value)
    sources, _ = open_model(str(loose), HEADS)
    assert sources["dit"].config.num_heads == 2 and sources["dit"].config.dim == 24


def test_refusals_are_one_line_naming_the_file(loose, tmp_path):
    from chronoedit.checkpoint.loose import identify, scan_folder
    from chronoedit.checkpoint.resolve import resolve_checkpoint

    assert [identify(loose / f"{f}.safetensors") for f in "abcd"] == ["dit", "vae", "text_encoder", "image_encoder"]
    odd = tmp_path / "odd"
    odd.mkdir()
    save_file({"foo.weight": torch.zeros(2)}, odd / "x.safetensors")
    with pytest.raises(CheckpointError, match=r"x\.safetensors: none of the known kinds") as e:
        scan_folder(odd)
    assert "\n" not in str(e.value)
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "a.safetensors").symlink_to(loose / "a.safetensors")
    with pytest.raises(CheckpointError, match=r"no vae, text_encoder, image_encoder file.*components\.vae=<file>"):
        resolve_checkpoint(partial)
    (partial / "b.safetensors").symlink_to(loose / "a.safetensors")
    with pytest.raises(CheckpointError, match=r"several dit files \(a\.safetensors, b\.safetensors\)"):
        resolve_checkpoint(partial)
    # a text encoder without an embedded tokenizer, none given: the one-line error names what to pass
    te = tmp_path / "te"
    te.mkdir()
    from chronoedit.checkpoint.load import materialize, open_safetensors

    plain = {k: materialize(v) for k, v in open_safetensors(loose / "c.safetensors").items() if k != "spiece_model"}
    save_file(plain, te / "c.safetensors")
    with pytest.raises(CheckpointError, match=r"c\.safetensors: no tokenizer embedded.*components\.tokenizer="):
        files = {"dit": "a", "vae": "b", "image_encoder": "d"}
        files = {n: str(loose / f"{f}.safetensors") for n, f in files.items()}
        resolve_checkpoint(None, files=files | {"text_encoder": str(te / "c.safetensors")})


# ------------------------------------------------------------------ bare LoRA paths, components.* on the command line


def test_lora_bare_paths_and_components_compose(tmp_path):
    from chronoedit.builders import compose_config
    from chronoedit.pipeline.config import EditConfig, LoraSpec

    configs = Path(__file__).resolve().parents[1] / "configs"
    overrides = [
        "preset=tiny",
        "lora=[a.safetensors,{path: b.safetensors, scale: 0.5}]",
        "components.dit=/x/dit.safetensors",
    ]
    cfg, _ = compose_config(configs, "edit", overrides, EditConfig)
    assert cfg.lora == [LoraSpec("a.safetensors"), LoraSpec("b.safetensors", scale=0.5)]
    assert cfg.components.given() == {"dit": "/x/dit.safetensors"}
    assert EditConfig(lora=["c.safetensors"]).lora == [LoraSpec("c.safetensors", 1.0, True)]
    for bad, why in (
        (3, "expected a file path"),
        ({"scale": 2}, "needs 'path'"),
        ({"path": "a", "x": 1}, "unknown"),
        ({"path": "a", "fuse": "no"}, "fuse true/false"),
    ):
        with pytest.raises(ValueError, match=why):
            EditConfig(lora=[bad])
    from chronoedit.pipeline.config import ComponentFiles
    from chronoedit.pipeline.job import check_inputs

    with pytest.raises(ValueError, match=r"no such file or folder: components\.vae=/no/vae\.safetensors"):
        check_inputs(EditConfig(components=ComponentFiles(vae="/no/vae.safetensors")), tmp_path / "out")


def test_bare_lora_path_is_applied(tmp_path):
    from chronoedit.lora.export import save_lora
    from chronoedit.lora.weights import LoRAWeights
    from chronoedit.pipeline.components import tiny_components
    from chronoedit.pipeline.config import EditConfig
    from chronoedit.pipeline.job import apply_loras

    components = tiny_components()
    dim = components.dit.cfg.dim
    g = torch.Generator().manual_seed(0)
    weights = {"blocks.0.self_attn.q": LoRAWeights(torch.randn(4, dim, generator=g), torch.randn(dim, 4, generator=g))}
    path = save_lora(weights, tmp_path / "l.safetensors")
    before = components.dit.blocks[0].self_attn.q.weight.clone()
    lines = apply_loras(components, EditConfig(lora=[str(path)]))
    assert "scale 1.0, fused" in lines[0]
    assert (components.dit.blocks[0].self_attn.q.weight - before).abs().max() > 0


# ------------------------------------------------------------------ GGUF DiTs (the optional gguf package)


def q8_0_bytes(w: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
    """Q8_0 written by hand: per 32 values an f16 scale d = amax / 127 and 32 int8s; (bytes, dequantised)."""
    rows, cols = w.shape
    blocks = w.float().reshape(rows, cols // 32, 32)
    d = (blocks.abs().amax(-1, keepdim=True) / 127).half()
    q = torch.round(blocks / d.float().clamp_min(1e-12)).clamp(-127, 127).to(torch.int8)
    raw = np.concatenate([d.numpy().view(np.uint8), q.numpy().view(np.uint8)], axis=-1)  # (rows, blocks, 34)
    return raw.reshape(rows, -1), (d.float() * q.float()).reshape(rows, cols)


def q4_k_bytes(rows: int, cols: int, seed: int) -> np.ndarray:
    """Random but valid Q4_K super-blocks (144 bytes per 256 values: f16 d, f16 dmin, 12 scale bytes, 128 nibbles)."""
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=(rows, cols // 256, 144), dtype=np.uint8)
    raw[..., 0:4] = np.array([0.004, 0.002], dtype=np.float16).view(np.uint8)
    return raw.reshape(rows, -1)


def test_gguf_dit_matches_dequantised(tmp_path):
    gguf = pytest.importorskip("gguf")
    from chronoedit.checkpoint.dit import load_dit
    from chronoedit.checkpoint.gguf_io import ORIG_SHAPE
    from chronoedit.models.dit import ChronoEditDiT, DiTConfig

    cfg = DiTConfig(dim=256, num_heads=2, num_layers=2, ffn_dim=512, text_dim=256, image_dim=256, freq_dim=256)
    state = ChronoEditDiT(cfg).init_weights(torch.Generator().manual_seed(0)).state_dict()  # our names are Wan's
    path = tmp_path / "chronoedit-Q8_0.gguf"
    writer = gguf.GGUFWriter(str(path), "wan")
    want, kinds = {}, set()
    for i, (k, v) in enumerate(state.items()):
        v = v.float()
        if v.ndim == 2 and k.startswith("blocks.") and i % 2:
            raw, want[k] = q8_0_bytes(v)
            writer.add_tensor(k, raw, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            kinds.add("Q8_0")
        elif v.ndim == 2 and k.startswith("blocks."):
            raw = q4_k_bytes(*v.shape, seed=i)
            want[k] = torch.from_numpy(gguf.quants.dequantize(raw, gguf.GGMLQuantizationType.Q4_K))
            writer.add_tensor(k, raw, raw_dtype=gguf.GGMLQuantizationType.Q4_K)
            kinds.add("Q4_K")
        elif v.ndim > 4:  # the Conv3d patch embedding: flattened, its shape in ComfyUI-GGUF's field
            writer.add_tensor(k, v.reshape(v.shape[0], -1).numpy())
            writer.add_array(ORIG_SHAPE + k, list(v.shape))
            want[k] = v
        else:
            writer.add_tensor(k, v.half().numpy() if v.ndim == 2 else v.numpy())
            want[k] = v.half().float() if v.ndim == 2 else v
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert kinds == {"Q8_0", "Q4_K"}
    with pytest.raises(CheckpointError, match=r"Q8_0\.gguf.*model\.dit\.num_heads="):
        load_dit(path)
    from chronoedit.checkpoint.registry import load, open_component

    src = open_component(path, "dit", hints={"num_heads": 2})
    assert src.config == cfg and "GGUF" in src.describe
    got = load(src, dtype=torch.float32).state_dict()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0, msg=k)
    # a quantisation type outside the supported ones: one line naming the file, before any tensor is read
    bad = tmp_path / "iq.gguf"
    writer = gguf.GGUFWriter(str(bad), "wan")
    writer.add_tensor(
        "blocks.0.ffn.0.weight", np.zeros((2, 72), dtype=np.uint8), raw_dtype=gguf.GGMLQuantizationType.IQ4_NL
    )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(CheckpointError, match=r"iq\.gguf: GGUF quantisation types not supported.*IQ4_NL") as e:
        open_component(bad, "dit")
    assert "\n" not in str(e.value)
