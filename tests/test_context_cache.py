"""Exact reuse across the steps of an edit: every block's cross-attention K/V of each prompt and the RoPE table
are computed once (``ContextCache``) and give the numbers of the uncached DiT (≤ 1e-6 relative, fp32), with CFG
(sequential and batched) and through the reasoning drop; the cache is rebuilt when the prompt, the image or the
frames change. Plus: a DiT block traces with no graph break (``runtime.compile``)."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo

from chronoedit.models.dit import DIT_PRESETS, ChronoEditDiT, ContextCache
from chronoedit.pipeline import EditPipeline, EditRequest
from chronoedit.pipeline.components import tiny_components
from chronoedit.sampling import SamplerConfig
from tests.helpers import rel_err

TOL = 1e-6
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def dit():
    return ChronoEditDiT(DIT_PRESETS["tiny"]).init_weights(torch.Generator().manual_seed(0)).eval()


def _inputs(cfg, g, b=1, f=2, lt=7):
    return (
        torch.randn(b, cfg.in_channels, f, 4, 6, generator=g),
        torch.full((b,), 700.0),
        torch.cat([torch.randn(b, lt, cfg.text_dim, generator=g), torch.zeros(b, 512 - lt, cfg.text_dim)], dim=1),
        torch.randn(b, 5, cfg.image_dim, generator=g),
        torch.full((b,), lt),
    )


@torch.no_grad()
def test_cache_on_equals_cache_off_over_steps_branches_and_a_frame_drop(dit):
    g = torch.Generator().manual_seed(1)
    x, t, ctx, clip, lens = _inputs(dit.cfg, g, f=8)
    _, _, neg, _, neg_lens = _inputs(dit.cfg, g, f=8, lt=3)
    cache = ContextCache()
    for step in range(4):
        if step == 2:  # the reasoning drop: 8 -> 2 latent frames
            x = x[:, :, [0, -1]]
        for c, n in ((ctx, lens), (neg, neg_lens)):  # cond and uncond, as sequential CFG calls them
            tt = t - 100 * step
            want = dit(x, tt, c, clip, n)
            got = dit(x, tt, c, clip, n, cache=cache)
            assert rel_err(got, want) <= TOL
        x = torch.cat([x[:, :16] + 0.1 * want, x[:, 16:]], dim=1)  # a step on the noisy part
    assert cache.builds == 2  # one projection per prompt for the whole edit
    # batched CFG: one doubled batch of both prompts is one more entry, reused at every call
    both, both_lens = torch.cat([ctx, neg]), torch.cat([lens, neg_lens])
    x2, t2, clip2 = torch.cat([x, x]), torch.cat([t, t]), clip.expand(2, -1, -1)
    for _ in range(2):
        assert rel_err(dit(x2, t2, both, clip2, both_lens, cache=cache), dit(x2, t2, both, clip2, both_lens)) <= TOL
    assert cache.builds == 3


@torch.no_grad()
def test_the_cache_is_rebuilt_when_the_prompt_or_image_changes(dit):
    g = torch.Generator().manual_seed(2)
    x, t, ctx, clip, lens = _inputs(dit.cfg, g)
    cache = ContextCache()
    dit(x, t, ctx, clip, lens, cache=cache)
    other = ctx.clone()
    other[:, :7] += 1.0  # a new prompt
    assert rel_err(dit(x, t, other, clip, lens, cache=cache), dit(x, t, other, clip, lens)) <= TOL
    ctx[:, 0] += 1.0  # the same tensor changed in place: its version moves, the entry is not reused
    assert rel_err(dit(x, t, ctx, clip, lens, cache=cache), dit(x, t, ctx, clip, lens)) <= TOL
    new_clip = clip + 1.0  # a new image
    assert rel_err(dit(x, t, ctx, new_clip, lens, cache=cache), dit(x, t, ctx, new_clip, lens)) <= TOL
    assert cache.builds == 4


@pytest.mark.parametrize("cfg_batched,inference_mode", [(False, False), (True, False), (False, True)])
def test_pipeline_edit_is_the_same_with_and_without_the_cache(cfg_batched, inference_mode):
    from PIL import Image

    image = Image.fromarray((torch.rand(32, 32, 3, generator=torch.Generator().manual_seed(3)) * 255).byte().numpy())
    request = EditRequest(image=image, prompt="move the red circle left", reasoning_steps=2, num_frames=29,
                          height=32, width=32, guidance_scale=4.0)  # fmt: skip
    results = []
    for cached in (False, True):
        pipe = EditPipeline(tiny_components(), cfg_batched=cfg_batched, context_cache=cached, progress=False)
        with torch.inference_mode(inference_mode):  # inference tensors keep no version counter: still cached
            results.append(pipe(request, SamplerConfig(steps=4, shift=5.0)))
    off, on = results
    assert on.dropped_at == off.dropped_at == 2
    assert rel_err(on.latents, off.latents) <= TOL


def test_a_dit_block_traces_without_graph_breaks(dit):
    """What ``runtime.compile=true`` compiles: one block, one graph, no break (dynamo's own count)."""
    import torch._dynamo

    g = torch.Generator().manual_seed(4)
    x, t, ctx, clip, lens = _inputs(dit.cfg, g)
    with torch.no_grad():
        tokens, _, e0, text, img = dit.embed(x, t, ctx, clip, lens)
        rope = dit.rope(dit.token_grid(x), x.device)
        torch._dynamo.reset()
        explained = torch._dynamo.explain(dit.blocks[0])(tokens, e0, text, img, rope)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


@pytest.mark.slow
def test_compiled_edit_equals_eager_through_the_reasoning_drop():
    """``runtime.compile=true`` (inductor on this CPU): the same latents as eager within 1e-5, with the drop
    from 8 to 2 latent frames (a new input shape for the compiled blocks)."""
    from PIL import Image

    from chronoedit.parallelize import apply_compile

    image = Image.fromarray((torch.rand(32, 32, 3, generator=torch.Generator().manual_seed(5)) * 255).byte().numpy())
    request = EditRequest(image=image, prompt="drop the red circle", reasoning_steps=2, num_frames=29,
                          height=32, width=32, guidance_scale=4.0)  # fmt: skip
    eager = EditPipeline(tiny_components(), progress=False)(request, SamplerConfig(steps=4))
    torch._dynamo.reset()
    comps = tiny_components()
    apply_compile(comps.dit)
    compiled = EditPipeline(comps, progress=False)(request, SamplerConfig(steps=4))
    assert rel_err(compiled.latents, eager.latents) <= 1e-5
