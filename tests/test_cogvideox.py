"""SADA on CogVideoX text-to-video (tiny, random weights), through the public plugin contract:
v-prediction on a VP schedule fed the integer DDPM index, CFG batched into one call, latents
(B, F, C, H, W) patchified into a frames x height x width token grid, a rotary table without
a batch dimension, blocks returning (video, text)."""

import diffusers
import pytest
import torch

import sadakit
from sadakit.errors import UnsupportedPipelineError
from sadakit.plugins.video import cogvideox
from sadakit.testing.video_pipelines import tiny_cogvideox_pipeline
from plugin_checks import Forwards, plain, psnr


FRAMES, HEIGHT, WIDTH = 9, 48, 64  # latent 3 x 6 x 8 (frames x rows x columns), patches 2 x 2
GRID_TOKENS = 3 * 3 * 4
GRID_TOKENS_15 = 2 * 3 * 4  # CogVideoX 1.5 layout: 3 latent frames padded to 4, 2 frames per patch


@pytest.fixture(scope="module")
def cog_pipe():
    return tiny_cogvideox_pipeline()


@pytest.fixture
def cog(cog_pipe):
    yield from plain(cog_pipe)


def run(pipe, steps=30, seed=0, guidance_scale=6.0, batch=1):
    torch.manual_seed(seed)
    return pipe(prompt=["a red ball rolling"] * batch, negative_prompt=["blurry"] * batch, num_frames=FRAMES,
                height=HEIGHT, width=WIDTH, num_inference_steps=steps, guidance_scale=guidance_scale,
                max_sequence_length=16, generator=torch.Generator().manual_seed(seed), output_type="latent").frames


class BlockTokens:
    """Video tokens each block really computes (seen inside the block, after sadakit's selection)."""

    def __init__(self, pipe):
        self.seen: list[int] = []
        self._handles = [b.norm1.register_forward_pre_hook(self._hook) for b in pipe.transformer.transformer_blocks]

    def _hook(self, module, args):
        self.seen.append(args[0].shape[1])  # norm1(hidden_states, encoder_hidden_states, temb)

    def close(self):
        for h in self._handles:
            h.remove()


@pytest.mark.parametrize("batch", [1, 2])
def test_cogvideox_skips_calls_with_batched_cfg_and_remove_restores(cog, batch):
    base = run(cog, batch=batch)
    forwards = Forwards(cog.transformer.patch_embed)
    try:
        sadakit.accelerate(cog)
        out = run(cog, batch=batch)
    finally:
        forwards.close()
    rep = sadakit.report(cog)
    assert rep.family == "cogvideox" and rep.streams in ([], ["cond_uncond"])  # one call per step
    assert rep.denoiser_calls == 30 and rep.batch_size == 2 * batch  # [uncond..., cond...] in one call
    assert rep.network_calls == forwards.count < 30, rep.decisions
    assert rep.skipped_calls == 30 - forwards.count
    assert rep.per_sample_skipped[:batch] == rep.per_sample_skipped[batch:]  # CFG halves decide together
    assert torch.isfinite(out).all() and psnr(out, base) > 35
    sadakit.remove(cog)
    assert torch.equal(run(cog, batch=batch), base)


def test_cogvideox_without_cfg_is_one_row_per_prompt(cog):
    sadakit.accelerate(cog)
    run(cog, guidance_scale=1.0)
    rep = sadakit.report(cog)
    assert rep.denoiser_calls == 30 and rep.batch_size == 1 and rep.skipped_calls > 0


@pytest.mark.parametrize("patch_size_t, tokens", [(None, GRID_TOKENS), (2, GRID_TOKENS_15)])
def test_cogvideox_partial_calls_on_the_frame_height_width_grid(patch_size_t, tokens):
    # random-weight trajectories look unstable almost everywhere under the deterministic DDIM
    # solver; CogVideoXDPMScheduler adds fresh noise from the call's generator every step,
    # which leaves tokens the criterion calls stable
    pipe = tiny_cogvideox_pipeline(patch_size_t=patch_size_t, scheduler="dpm")
    base = run(pipe)
    sadakit.accelerate(pipe, sadakit.SADAConfig.criterion_only(skip_steps=False, max_token_fraction=1.0))
    seen = BlockTokens(pipe)
    try:
        out = run(pipe)
    finally:
        seen.close()
    rep = sadakit.report(pipe)
    assert rep.partial_calls >= 2, rep.decisions
    assert max(seen.seen) == tokens and min(seen.seen) < tokens
    # one call holds both CFG rows, which share one token set (the rotary table has no rows)
    assert 2 * sum(seen.seen) == rep.tokens_computed < rep.tokens_total == 30 * 2 * 2 * tokens  # 2 blocks, 2 rows
    assert not [n for n in rep.notes if "matches no grid" in n], rep.notes
    assert torch.isfinite(out).all() and psnr(out, base) > 30
    sadakit.remove(pipe)
    assert torch.equal(run(pipe), base)


def test_a_partial_call_keeping_every_token_is_the_full_call(cog):
    base = run(cog)
    # anchor_window=1 makes every token an anchor: partial calls that select all tokens, through
    # the runtime's gather / rotary cut / scatter path
    config = sadakit.SADAConfig.criterion_only(skip_steps=False, max_token_fraction=1.0, anchor_window=1)
    sadakit.accelerate(cog, config)
    out = run(cog)
    rep = sadakit.report(cog)
    assert rep.partial_calls >= 10 and rep.tokens_computed == rep.tokens_total, rep.decisions
    torch.testing.assert_close(out, base, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("patch_size_t", [None, 2])
def test_the_token_grid_is_the_patch_embedding_order(patch_size_t):
    """A marker in one latent element lands in the grid cell whose index is its video token."""
    pipe = tiny_cogvideox_pipeline(patch_size_t=patch_size_t)
    config = pipe.transformer.config
    p_t = patch_size_t or 1
    frames = 4  # a multiple of both temporal patch sizes (the pipeline pads 1.5's latents so)
    latent = torch.zeros(1, frames, config.in_channels, 6, 8)
    frame, row, col = 3, 3, 5
    latent[0, frame, 1, row, col] = 1.0
    text = torch.zeros(1, 4, config.text_embed_dim)
    with torch.no_grad():
        embed = pipe.transformer.patch_embed
        tokens = embed(text, latent)[:, 4:] - embed(text, torch.zeros_like(latent))[:, 4:]
    changed = tokens.abs().sum(dim=-1)[0].nonzero().flatten().tolist()
    grid = cogvideox.cogvideox_grid(pipe)(latent, {})
    assert grid.shape == (1, frames // p_t, 3, 4)
    assert changed == [grid.flatten().nonzero().item()] == [(frame // p_t) * 12 + (row // 2) * 4 + col // 2]


@pytest.mark.parametrize("scheduler", ["ddim", "dpm"])
def test_cogvideox_parameterization_is_the_schedulers_v_prediction(scheduler):
    pipe = tiny_cogvideox_pipeline(scheduler=scheduler)
    sched = pipe.scheduler
    sched.set_timesteps(30)
    param = cogvideox.plugin.sadakit_parameterization(pipe)
    x, v = torch.randn(2, 3, 8, 6, 8), torch.randn(2, 3, 8, 6, 8)
    for t in sched.timesteps:  # the first is at zero terminal SNR: x0 = -v there
        lvl = param.level(t.expand(2), x.device)
        ab = sched.alphas_cumprod[t].float()
        expected = ab.sqrt() * x - (1 - ab).sqrt() * v  # the scheduler's pred_original_sample
        torch.testing.assert_close(param.x0_from_output(x, v, lvl), expected, rtol=1e-4, atol=1e-4)


def test_a_flow_matching_scheduler_is_refused_before_anything_changes(cog):
    cog.scheduler = diffusers.FlowMatchEulerDiscreteScheduler()
    with pytest.raises(UnsupportedPipelineError, match="v-prediction model on a VP schedule"):
        sadakit.accelerate(cog)
    assert not sadakit.is_accelerated(cog)


def test_image_to_video_is_left_unclaimed(cog):
    i2v = diffusers.CogVideoXImageToVideoPipeline(tokenizer=cog.tokenizer, text_encoder=cog.text_encoder,
                                                  vae=cog.vae, transformer=cog.transformer,
                                                  scheduler=cog.scheduler)
    with pytest.raises(UnsupportedPipelineError, match="No sadakit plugin handles .*CogVideoXImageToVideoPipeline"):
        sadakit.accelerate(i2v)
    assert "CogVideoXPipeline" in sadakit.supported_pipelines()
    assert "CogVideoXImageToVideoPipeline" not in sadakit.supported_pipelines()
