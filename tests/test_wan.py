"""SADA on Wan 2.1 text-to-video (tiny, random weights), through the public plugin contract:
separate-call CFG as two call streams, a frames x height x width token grid, positional
block arguments indexed by token."""

import diffusers
import pytest
import torch

import sadakit
from sadakit.testing import tiny_wan_pipeline
from plugin_checks import Forwards, plain, psnr


FRAMES, SIZE = 9, 64  # latent 3 x 8 x 8, token grid 3 x 4 x 4 (48 tokens)
GRID_TOKENS = 3 * 4 * 4


@pytest.fixture(scope="module")
def wan_pipe():
    return tiny_wan_pipeline()


@pytest.fixture
def wan(wan_pipe):
    yield from plain(wan_pipe)


def run(pipe, steps=30, seed=0, guidance_scale=5.0, batch=1):
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the stochastic sampler draws its step noise from the global generator
    return pipe(prompt=["a red ball rolling"] * batch, negative_prompt=["blurry"] * batch, num_frames=FRAMES,
                height=SIZE, width=SIZE, num_inference_steps=steps, guidance_scale=guidance_scale,
                generator=generator, output_type="latent").frames


class BlockTokens:
    """Tokens each block really computes (seen inside the block, after sadakit's selection)."""

    def __init__(self, pipe):
        self.seen: list[int] = []
        self._handles = [b.norm1.register_forward_pre_hook(self._hook) for b in pipe.transformer.blocks]

    def _hook(self, module, args):
        self.seen.append(args[0].shape[1])

    def close(self):
        for h in self._handles:
            h.remove()


@pytest.mark.parametrize("batch", [1, 2])
def test_wan_cfg_streams_skip_together_and_remove_restores(wan, batch):
    base = run(wan, batch=batch)
    forwards = Forwards(wan.transformer.patch_embedding)
    try:
        sadakit.accelerate(wan)
        out = run(wan, batch=batch)
    finally:
        forwards.close()
    rep = sadakit.report(wan)
    assert rep.family == "wan" and rep.streams == ["cond", "uncond"]
    assert rep.denoiser_calls == 60 and rep.batch_size == 2 * batch  # every call of both branches
    assert rep.network_calls == forwards.count < 50, rep.decisions
    steps = [rep.decisions[i:i + 2] for i in range(0, 60, 2)]
    assert all(s[0] == s[1] for s in steps), steps  # cond and uncond of a step decide together
    assert rep.per_sample_skipped[:batch] == rep.per_sample_skipped[batch:]
    assert torch.isfinite(out).all() and psnr(out, base) > 35
    sadakit.remove(wan)
    assert torch.equal(run(wan, batch=batch), base)


def test_wan_non_square_video(wan):
    def run_wide():
        torch.manual_seed(0)
        return wan(prompt="a red ball rolling", negative_prompt="blurry", num_frames=FRAMES, height=48, width=80,
                   num_inference_steps=30, guidance_scale=5.0, generator=torch.Generator().manual_seed(0),
                   output_type="latent").frames

    base = run_wide()
    sadakit.accelerate(wan)
    out = run_wide()
    rep = sadakit.report(wan)
    assert out.shape == (1, 16, 3, 6, 10) and rep.denoiser_calls == 60 and rep.network_calls < 50, rep.decisions
    assert torch.isfinite(out).all() and psnr(out, base) > 35
    sadakit.remove(wan)
    assert torch.equal(run_wide(), base)


def test_wan_partial_calls_on_the_frame_height_width_grid(wan):
    # random-weight flow trajectories are smooth enough that every token looks unstable; the
    # stochastic sampler's noise gives stable tokens to prune (as in the Flux tests)
    wan.scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0, stochastic_sampling=True)
    base = run(wan, steps=16)
    sadakit.accelerate(wan, sadakit.SADAConfig.criterion_only(skip_steps=False, max_token_fraction=1.0))
    seen = BlockTokens(wan)
    try:
        out = run(wan, steps=16)
    finally:
        seen.close()
    rep = sadakit.report(wan)
    assert rep.partial_calls >= 2, rep.decisions
    assert max(seen.seen) == GRID_TOKENS and min(seen.seen) < GRID_TOKENS
    assert sum(seen.seen) == rep.tokens_computed < rep.tokens_total == 32 * 2 * GRID_TOKENS
    assert not [n for n in rep.notes if "matches no grid" in n]
    assert torch.isfinite(out).all() and psnr(out, base) > 20
    sadakit.remove(wan)
    assert torch.equal(run(wan, steps=16), base)


def test_wan_without_cfg_is_one_stream(wan):
    sadakit.accelerate(wan)
    run(wan, guidance_scale=1.0)
    rep = sadakit.report(wan)
    assert rep.streams == ["cond"] and rep.denoiser_calls == 30 and rep.skipped_calls > 0


def test_a_grid_that_does_not_match_the_blocks_is_reported(wan):
    """A plugin whose latent grid is not the blocks' token grid: blocks run in full, report says why."""
    from sadakit.plugins.video import wan as wan_plugin

    class WrongGrid:
        @sadakit.hookimpl
        def sadakit_family(self, pipe):
            return "wan-wrong-grid" if isinstance(pipe, diffusers.WanPipeline) else None

        # the built-in plugin's answers, through its public hook methods

        @sadakit.hookimpl
        def sadakit_denoiser(self, pipe):
            # the latent's (F, H, W) grid, not the patchified one the blocks see
            return sadakit.DenoiserSpec(module=pipe.transformer, sample_arg="hidden_states")

        @sadakit.hookimpl
        def sadakit_parameterization(self, pipe):
            return wan_plugin.plugin.sadakit_parameterization(pipe)

        @sadakit.hookimpl
        def sadakit_token_blocks(self, pipe, denoiser):
            return wan_plugin.plugin.sadakit_token_blocks(pipe, denoiser)

    plugin = WrongGrid()
    sadakit.register_plugin(plugin, name="wrong-grid")
    try:
        wan.scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0, stochastic_sampling=True)
        sadakit.accelerate(wan, sadakit.SADAConfig.criterion_only(skip_steps=False, max_token_fraction=1.0))
        run(wan, steps=12)
        rep = sadakit.report(wan)
    finally:
        sadakit.remove(wan)
        sadakit.unregister_plugin(plugin)
    assert rep.family == "wan-wrong-grid"
    assert rep.tokens_computed == rep.tokens_total and rep.partial_calls == 0
    assert any("matches no grid of the latent's token grid (3, 8, 8)" in n for n in rep.notes), rep.notes
