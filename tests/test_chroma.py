"""SADA on Chroma (tiny, random weights), through the public plugin contract: CFG as one
call per branch on the same latent (two call streams, named by the repeated sample), packed
latents placed on their grid by ``img_ids``, a per-token text+image attention mask and a
rotary table without batch dimension, single-stream blocks whose [text, image] sequence keeps
its text tokens on partial calls, and the refusals.

Real forwards are counted on ``x_embedder`` and the tokens each block computes inside the
block, never from sadakit's report alone.
"""

import diffusers
import pytest
import torch

import sadakit
from sadakit.errors import UnsupportedPipelineError
from sadakit.testing.dit_image_pipelines import tiny_chroma_pipeline
from plugin_checks import Forwards, plain, psnr


PLUGIN = "sadakit.plugins.image.chroma:plugin"
PROMPTS = ["a red square on the left", "a blue circle at the top"]
TEXT_TOKENS = 16  # max_sequence_length


@pytest.fixture(scope="module")
def chroma_pipe():
    return tiny_chroma_pipeline()


@pytest.fixture
def chroma(chroma_pipe):
    yield from plain(chroma_pipe)


def run(pipe, steps=30, seed=0, height=64, width=96, prompts=PROMPTS[:1], **kw):
    torch.manual_seed(seed)  # the stochastic sampler draws its step noise from the global generator
    return pipe(prompt=prompts, negative_prompt=["blurry"] * len(prompts), num_inference_steps=steps,
                height=height, width=width, max_sequence_length=TEXT_TOKENS, output_type="pt",
                generator=torch.Generator().manual_seed(seed), **kw).images


def stochastic(pipe):
    # random-weight flow trajectories look unstable everywhere to the deterministic criterion;
    # the stochastic sampler's noise gives stable tokens to prune (as in the Flux tests)
    pipe.scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_config(
        pipe.scheduler.config, stochastic_sampling=True)


class BlockTokens:
    """Tokens every block computes, seen inside it (after sadakit's selection): double-stream
    blocks normalise image (``norm1``) and text (``norm1_context``) apart; single-stream blocks
    normalise [text, image] together (``norm``)."""

    def __init__(self, pipe):
        self.image: list[int] = []
        self.text: list[int] = []
        self.joint: list[int] = []
        t = pipe.transformer
        self._handles = [b.norm1.register_forward_pre_hook(self._hook(self.image)) for b in t.transformer_blocks]
        self._handles += [b.norm1_context.register_forward_pre_hook(self._hook(self.text))
                          for b in t.transformer_blocks]
        self._handles += [b.norm.register_forward_pre_hook(self._hook(self.joint)) for b in t.single_transformer_blocks]

    @staticmethod
    def _hook(into):
        return lambda module, args: into.append(args[0].shape[1])

    def close(self):
        for h in self._handles:
            h.remove()


def test_chroma_cfg_streams_skip_together_and_remove_restores(chroma):
    base = run(chroma)
    other_seed = run(chroma, seed=1)
    forwards = Forwards(chroma.transformer.x_embedder)
    try:
        sadakit.accelerate(chroma)
        out = run(chroma)
    finally:
        forwards.close()
    rep = sadakit.report(chroma)
    assert rep.family == "chroma" and rep.streams == ["call0", "call1"]  # cond, uncond
    assert rep.denoiser_calls == 60  # every call of both branches
    assert rep.network_calls == forwards.count < 60, rep.decisions
    steps = [rep.decisions[i:i + 2] for i in range(0, 60, 2)]
    assert all(s[0] == s[1] for s in steps), steps  # both branches of a step decide together
    assert sum(s == "FF" for s in steps) < 30
    assert torch.isfinite(out).all()
    assert psnr(out, base) > 35 > psnr(other_seed, base) + 15
    sadakit.remove(chroma)
    assert torch.equal(run(chroma), base)


def test_chroma_partial_calls_share_one_token_set_and_keep_text(chroma):
    height, width = 96, 128  # packed grid 6 x 8
    grid = 6 * 8
    stochastic(chroma)
    base = run(chroma, height=height, width=width, prompts=PROMPTS)
    sadakit.accelerate(chroma, sadakit.SADAConfig.criterion_only(skip_steps=False, max_token_fraction=1.0))
    seen = BlockTokens(chroma)
    try:
        out = run(chroma, height=height, width=width, prompts=PROMPTS)
    finally:
        seen.close()
    rep = sadakit.report(chroma)
    blocks = len(chroma.transformer.transformer_blocks)
    singles = len(chroma.transformer.single_transformer_blocks)
    assert rep.partial_calls >= 2, rep.decisions
    assert max(seen.image) == grid and min(seen.image) < grid
    assert set(seen.text) == {TEXT_TOKENS}
    # single-stream blocks compute the text tokens and the double-stream blocks' image tokens
    per_call = len(seen.image) // blocks
    image_per_call = seen.image[::blocks]
    assert seen.joint == [TEXT_TOKENS + n for n in image_per_call for _ in range(singles)]
    assert len(seen.joint) == per_call * singles
    # two prompts per call share one token set (the rotary table has no batch dimension); the
    # single-stream blocks' text tokens are counted as computed
    assert (sum(seen.image) + sum(seen.joint)) * 2 == rep.tokens_computed < rep.tokens_total
    assert rep.tokens_total == 60 * (blocks * grid + singles * (TEXT_TOKENS + grid)) * 2
    assert not [n for n in rep.notes if "matches no grid" in n], rep.notes
    assert out.shape == (2, 3, height, width) and torch.isfinite(out).all()
    assert psnr(out, base) > 20
    sadakit.remove(chroma)
    assert torch.equal(run(chroma, height=height, width=width, prompts=PROMPTS), base)


def test_chroma_partial_call_keeping_every_token_is_the_full_call(chroma):
    """anchor_window=1 makes every token required: each partial call gathers all tokens (and
    their rotary rows and mask entries), and must reproduce the full call."""
    base = run(chroma, prompts=PROMPTS)
    sadakit.accelerate(chroma, sadakit.SADAConfig.criterion_only(skip_steps=False, max_token_fraction=1.0,
                                                                  anchor_window=1))
    seen = BlockTokens(chroma)
    try:
        out = run(chroma, prompts=PROMPTS)
    finally:
        seen.close()
    rep = sadakit.report(chroma)
    assert rep.partial_calls >= 40 and set(seen.image) == {4 * 6}, rep.decisions
    assert set(seen.joint) == {TEXT_TOKENS + 4 * 6} and rep.tokens_computed == rep.tokens_total
    torch.testing.assert_close(out, base, rtol=1e-4, atol=1e-5)


def test_chroma_ip_adapter_and_vp_scheduler_refused_before_any_change(chroma):
    chroma.transformer.encoder_hid_proj = torch.nn.Identity()  # what load_ip_adapter sets
    try:
        with pytest.raises(UnsupportedPipelineError, match="IP-adapter"):
            sadakit.accelerate(chroma)
    finally:
        del chroma.transformer.encoder_hid_proj
    assert not sadakit.is_accelerated(chroma)
    chroma.scheduler = diffusers.EulerDiscreteScheduler()
    with pytest.raises(UnsupportedPipelineError, match="flow-matching"):
        sadakit.accelerate(chroma)
    assert not sadakit.is_accelerated(chroma)
    hooks = getattr(chroma.transformer, "_diffusers_hook", None)
    assert hooks is None or not hooks.hooks


def test_single_stream_blocks_follow_a_new_prompt_length(chroma):
    """The text tokens in front of the single-stream blocks' grid follow the prompt's length:
    a generation with a longer text sequence relearns the blocks' token counts and prunes again."""
    stochastic(chroma)
    sadakit.accelerate(chroma, sadakit.SADAConfig.criterion_only(skip_steps=False, max_token_fraction=1.0))
    run(chroma, steps=12)
    longer = TEXT_TOKENS + 8
    seen = BlockTokens(chroma)
    try:
        torch.manual_seed(0)
        out = chroma(prompt=PROMPTS[:1], negative_prompt=["blurry"], num_inference_steps=12, height=64, width=96,
                     max_sequence_length=longer, output_type="pt", generator=torch.Generator().manual_seed(0)).images
    finally:
        seen.close()
    rep = sadakit.report(chroma)
    assert rep.partial_calls >= 2, rep.decisions
    assert set(seen.text) == {longer}
    assert min(seen.joint) < longer + 4 * 6 and all(j >= longer for j in seen.joint)
    assert torch.isfinite(out).all()
