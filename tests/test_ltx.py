"""SADA on LTX-Video text-to-video (tiny, random weights), through the public plugin contract:
flow matching fed 1000 * sigma, CFG batched into one call, packed latents (B, N, C) whose
frames x height x width grid comes from the call's arguments, a per-row rotary table."""

import diffusers
import pytest
import torch

import sadakit
from sadakit.errors import UnsupportedPipelineError
from sadakit.plugins.video import ltx
from sadakit.testing.video_pipelines import tiny_ltx_pipeline
from plugin_checks import Forwards, plain, psnr


FRAMES, HEIGHT, WIDTH = 17, 96, 128  # latent 3 x 3 x 4 (the VAE compresses 8x in time, 32x in space)
GRID_TOKENS = 3 * 3 * 4


@pytest.fixture(scope="module")
def ltx_pipe():
    return tiny_ltx_pipeline()


@pytest.fixture
def pipe(ltx_pipe):
    yield from plain(ltx_pipe)


def run(pipe, steps=30, seed=0, guidance_scale=3.0, batch=1):
    torch.manual_seed(seed)  # the stochastic sampler draws its step noise from the global generator
    return pipe(prompt=["a red ball rolling"] * batch, negative_prompt=["blurry"] * batch, num_frames=FRAMES,
                height=HEIGHT, width=WIDTH, num_inference_steps=steps, guidance_scale=guidance_scale,
                max_sequence_length=16, generator=torch.Generator().manual_seed(seed), output_type="latent").frames


class BlockTokens:
    """(rows, tokens) each block really computes (seen inside the block, after sadakit's selection)."""

    def __init__(self, pipe):
        self.seen: list[tuple[int, int]] = []
        self._handles = [b.norm1.register_forward_pre_hook(self._hook) for b in pipe.transformer.transformer_blocks]

    def _hook(self, module, args):
        self.seen.append(tuple(args[0].shape[:2]))

    def close(self):
        for h in self._handles:
            h.remove()


@pytest.mark.parametrize("batch", [1, 2])
def test_ltx_skips_calls_with_batched_cfg_and_remove_restores(pipe, batch):
    base = run(pipe, batch=batch)
    forwards = Forwards(pipe.transformer.proj_in)
    try:
        sadakit.accelerate(pipe)
        out = run(pipe, batch=batch)
    finally:
        forwards.close()
    rep = sadakit.report(pipe)
    assert rep.family == "ltx" and rep.streams in ([], ["cond_uncond"])  # one call per step
    assert rep.denoiser_calls == 30 and rep.batch_size == 2 * batch  # [uncond..., cond...] in one call
    assert rep.network_calls == forwards.count < 30, rep.decisions
    assert rep.skipped_calls == 30 - forwards.count
    assert rep.per_sample_skipped[:batch] == rep.per_sample_skipped[batch:]  # CFG halves decide together
    assert torch.isfinite(out).all() and psnr(out, base) > 35
    sadakit.remove(pipe)
    assert torch.equal(run(pipe, batch=batch), base)


def test_ltx_without_cfg_is_one_row_per_prompt(pipe):
    sadakit.accelerate(pipe)
    run(pipe, guidance_scale=1.0)
    rep = sadakit.report(pipe)
    assert rep.denoiser_calls == 30 and rep.batch_size == 1 and rep.skipped_calls > 0


def test_ltx_partial_calls_on_the_frame_height_width_grid(pipe):
    # random-weight flow trajectories are smooth enough that most tokens look unstable; the
    # stochastic sampler's noise gives stable tokens to prune (as in the Wan and Flux tests)
    pipe.scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config,
                                                                          stochastic_sampling=True)
    base = run(pipe)
    sadakit.accelerate(pipe, sadakit.SADAConfig.criterion_only(skip_steps=False, max_token_fraction=1.0))
    seen = BlockTokens(pipe)
    try:
        out = run(pipe)
    finally:
        seen.close()
    rep = sadakit.report(pipe)
    assert rep.partial_calls >= 2, rep.decisions
    tokens = [n for _, n in seen.seen]
    assert max(tokens) == GRID_TOKENS and min(tokens) < GRID_TOKENS
    # the rotary table has rows: each CFG row keeps its own tokens, as many per row
    assert sum(rows * n for rows, n in seen.seen) == rep.tokens_computed < rep.tokens_total == 30 * 2 * 2 * GRID_TOKENS
    assert not [n for n in rep.notes if "matches no grid" in n], rep.notes
    assert torch.isfinite(out).all() and psnr(out, base) > 30
    sadakit.remove(pipe)
    assert torch.equal(run(pipe), base)


def test_a_partial_call_keeping_every_token_is_the_full_call(pipe):
    base = run(pipe)
    # anchor_window=1 makes every token an anchor: partial calls that select all tokens, through
    # the runtime's gather / rotary cut / scatter path
    config = sadakit.SADAConfig.criterion_only(skip_steps=False, max_token_fraction=1.0, anchor_window=1)
    sadakit.accelerate(pipe, config)
    out = run(pipe)
    rep = sadakit.report(pipe)
    assert rep.partial_calls >= 10 and rep.tokens_computed == rep.tokens_total, rep.decisions
    torch.testing.assert_close(out, base, rtol=1e-4, atol=1e-4)


def test_the_token_grid_is_the_packing_order(pipe):
    """A marker in one unpacked latent element lands in the grid cell of its packed token."""
    to_grid = ltx.ltx_grid(pipe)
    latent = torch.zeros(1, 8, 3, 3, 4)  # (B, C, F, H, W), as the pipeline makes it before packing
    frame, row, col = 1, 2, 3
    latent[0, 5, frame, row, col] = 1.0
    packed = pipe._pack_latents(latent, pipe.transformer_spatial_patch_size, pipe.transformer_temporal_patch_size)
    hot = packed.abs().sum(dim=-1)[0].nonzero().flatten().tolist()
    grid = to_grid(packed, {"num_frames": 3, "height": 3, "width": 4})
    assert grid.shape == (1, 3, 3, 4) and grid[0, frame, row, col] > 0
    assert hot == [grid.flatten().nonzero().item()] == [frame * 12 + row * 4 + col]


def test_a_call_without_its_grid_is_refused_clearly(pipe):
    to_grid = ltx.ltx_grid(pipe)
    packed = torch.zeros(1, GRID_TOKENS, 8)
    with pytest.raises(UnsupportedPipelineError, match="without num_frames / height / width"):
        to_grid(packed, {"num_frames": 3})
    with pytest.raises(UnsupportedPipelineError, match="3 x 3 x 5 latent but 36 packed tokens"):
        to_grid(packed, {"num_frames": 3, "height": 3, "width": 5})


def test_ltx_flow_time_is_the_schedulers_sigma(pipe):
    sched = pipe.scheduler
    sched.set_timesteps(30, mu=1.0)
    param = ltx.plugin.sadakit_parameterization(pipe)
    for t, sigma in zip(sched.timesteps, sched.sigmas):
        tau = param.level(t.expand(2), torch.device("cpu")).tau
        torch.testing.assert_close(tau.expand(2), sigma.expand(2).float())


def test_a_vp_scheduler_is_refused_before_anything_changes(pipe):
    pipe.scheduler = diffusers.DDIMScheduler()
    with pytest.raises(UnsupportedPipelineError, match="not a flow-matching scheduler"):
        sadakit.accelerate(pipe)
    assert not sadakit.is_accelerated(pipe)


def test_image_to_video_is_left_unclaimed(pipe):
    i2v = diffusers.LTXImageToVideoPipeline(scheduler=pipe.scheduler, vae=pipe.vae, text_encoder=pipe.text_encoder,
                                            tokenizer=pipe.tokenizer, transformer=pipe.transformer)
    with pytest.raises(UnsupportedPipelineError, match="No sadakit plugin handles .*LTXImageToVideoPipeline"):
        sadakit.accelerate(i2v)
    assert "LTXPipeline" in sadakit.supported_pipelines()
    assert "LTXImageToVideoPipeline" not in sadakit.supported_pipelines()
