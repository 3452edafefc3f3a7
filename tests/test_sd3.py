"""SADA on Stable Diffusion 3.5 (tiny, random weights), through the public plugin contract:
CFG batched into one call (rows of a prompt decide together), a patchified token grid on a
non-square latent, joint blocks whose last one returns no text stream, and the refusals.

Real forwards are counted on the patch embedding and the tokens each block computes inside
the block, never from sadakit's report alone.
"""

import diffusers
import pytest
import torch

import sadakit
from sadakit.errors import UnsupportedPipelineError
from sadakit.testing.dit_image_pipelines import tiny_sd3_pipeline
from plugin_checks import Forwards, plain, psnr


PLUGIN = "sadakit.plugins.image.sd3:plugin"
PROMPTS = ["a red square on the left", "a blue circle at the top"]
TEXT_TOKENS = 77 + 16  # CLIP + T5 (max_sequence_length=16)


@pytest.fixture(scope="module")
def sd3_pipe():
    return tiny_sd3_pipeline()


@pytest.fixture
def sd3(sd3_pipe):
    yield from plain(sd3_pipe)


def run(pipe, steps=30, seed=0, height=64, width=96, prompts=PROMPTS, **kw):
    torch.manual_seed(seed)  # the stochastic sampler draws its step noise from the global generator
    return pipe(prompt=prompts, negative_prompt=["blurry"] * len(prompts), num_inference_steps=steps,
                height=height, width=width, max_sequence_length=16, output_type="pt",
                generator=torch.Generator().manual_seed(seed), **kw).images


def stochastic(pipe):
    # random-weight flow trajectories look unstable everywhere to the deterministic criterion;
    # the stochastic sampler's noise gives stable tokens to prune (as in the Flux tests)
    pipe.scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_config(
        pipe.scheduler.config, stochastic_sampling=True)


class BlockTokens:
    """Image and text tokens every joint block computes, seen inside it (after sadakit's
    selection): ``norm1`` normalises the image stream, ``norm1_context`` the text."""

    def __init__(self, pipe):
        self.image: list[int] = []
        self.text: list[int] = []
        blocks = pipe.transformer.transformer_blocks
        self._handles = [b.norm1.register_forward_pre_hook(self._image) for b in blocks]
        self._handles += [b.norm1_context.register_forward_pre_hook(self._text) for b in blocks]

    def _image(self, module, args):
        self.image.append(args[0].shape[1])

    def _text(self, module, args):
        self.text.append(args[0].shape[1])

    def close(self):
        for h in self._handles:
            h.remove()


def test_sd3_skips_calls_with_batched_cfg_and_remove_restores(sd3):
    base = run(sd3)
    other_seed = run(sd3, seed=1)
    forwards = Forwards(sd3.transformer.pos_embed)
    try:
        sadakit.accelerate(sd3)
        out = run(sd3)
    finally:
        forwards.close()
    rep = sadakit.report(sd3)
    assert rep.family == "sd3" and rep.denoiser_calls == 30 and rep.batch_size == 4  # [uncond x2, cond x2]
    assert rep.network_calls == forwards.count < 30, rep.decisions
    assert forwards.rows == 4 * forwards.count  # a computed call runs every row
    assert rep.per_sample_skipped[:2] == rep.per_sample_skipped[2:]  # CFG halves decide together
    assert torch.isfinite(out).all()
    assert psnr(out, base) > 35 > psnr(other_seed, base) + 15
    sadakit.remove(sd3)
    assert torch.equal(run(sd3), base)


def test_sd3_without_cfg_is_one_row_per_prompt(sd3):
    sadakit.accelerate(sd3)
    out = run(sd3, prompts=PROMPTS[:1], guidance_scale=1.0)
    rep = sadakit.report(sd3)
    assert rep.batch_size == 1 and rep.denoiser_calls == 30 and rep.skipped_calls > 0
    assert torch.isfinite(out).all()


def test_sd3_partial_calls_prune_image_tokens_only(sd3):
    height, width = 96, 128  # latent 12 x 16, token grid 6 x 8
    grid = 6 * 8
    stochastic(sd3)
    base = run(sd3, height=height, width=width)
    sadakit.accelerate(sd3, sadakit.SADAConfig.criterion_only(skip_steps=False, max_token_fraction=1.0))
    seen = BlockTokens(sd3)
    try:
        out = run(sd3, height=height, width=width)
    finally:
        seen.close()
    rep = sadakit.report(sd3)
    blocks = len(sd3.transformer.transformer_blocks)
    assert rep.partial_calls >= 2, rep.decisions
    assert max(seen.image) == grid and min(seen.image) < grid
    assert sum(seen.image) * 4 == rep.tokens_computed < rep.tokens_total == 30 * blocks * grid * 4
    assert set(seen.text) == {TEXT_TOKENS}  # text tokens are never pruned
    assert not [n for n in rep.notes if "matches no grid" in n]
    assert out.shape == (2, 3, height, width) and torch.isfinite(out).all()
    assert psnr(out, base) > 25
    sadakit.remove(sd3)
    assert torch.equal(run(sd3, height=height, width=width), base)


def test_sd3_partial_call_keeping_every_token_is_the_full_call(sd3):
    """anchor_window=1 makes every token required: each partial call keeps all tokens (gathered,
    run and merged back through sadakit's path) and must reproduce the full call."""
    base = run(sd3)
    sadakit.accelerate(sd3, sadakit.SADAConfig.criterion_only(skip_steps=False, max_token_fraction=1.0,
                                                               anchor_window=1))
    seen = BlockTokens(sd3)
    try:
        out = run(sd3)
    finally:
        seen.close()
    rep = sadakit.report(sd3)
    assert rep.partial_calls >= 20 and set(seen.image) == {4 * 6}, rep.decisions
    torch.testing.assert_close(out, base, rtol=1e-4, atol=1e-5)


def test_sd3_skip_layer_guidance_is_refused_at_its_call(sd3):
    base = run(sd3, steps=10)
    sadakit.accelerate(sd3)
    with pytest.raises(UnsupportedPipelineError, match="skip-layer guidance"):
        run(sd3, steps=10, skip_guidance_layers=[1])
    # the next generation starts clean
    fresh = run(sd3, steps=10)
    sadakit.remove(sd3)
    sadakit.accelerate(sd3)
    assert torch.equal(run(sd3, steps=10), fresh)
    sadakit.remove(sd3)
    assert torch.equal(run(sd3, steps=10), base)


def test_sd3_ip_adapter_and_vp_scheduler_refused_before_any_change(sd3):
    sd3.transformer.image_proj = torch.nn.Identity()  # what load_ip_adapter sets
    try:
        with pytest.raises(UnsupportedPipelineError, match="IP-adapter"):
            sadakit.accelerate(sd3)
    finally:
        del sd3.transformer.image_proj
    assert not sadakit.is_accelerated(sd3)
    sd3.scheduler = diffusers.EulerDiscreteScheduler()
    with pytest.raises(UnsupportedPipelineError, match="flow-matching"):
        sadakit.accelerate(sd3)
    assert not sadakit.is_accelerated(sd3)
    hooks = getattr(sd3.transformer, "_diffusers_hook", None)
    assert hooks is None or not hooks.hooks
