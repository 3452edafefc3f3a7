"""SADA on Wan 2.1 image-to-video (tiny, random weights): the transformer's sample is the noisy
latent with image-condition channels concatenated (36 channels in, 16 out), declared through
:attr:`sadakit.DenoiserSpec.noisy_channels`, so SADA reads and extrapolates only the 16 noisy
channels and the condition reaches every computed call untouched."""

import diffusers
import numpy as np
import pytest
import torch
from PIL import Image

import sadakit
from sadakit.errors import UnsupportedPipelineError
from sadakit.plugins.video import wan_i2v
from sadakit.testing.video_pipelines_2 import tiny_wan_i2v_pipeline
from plugin_checks import plain, psnr

FRAMES, HEIGHT, WIDTH = 9, 48, 64  # non-square: latent 3 x 6 x 8, token grid 3 x 3 x 4
GRID_TOKENS = 3 * 3 * 4


@pytest.fixture(scope="module")
def pipe_once():
    return tiny_wan_i2v_pipeline()


@pytest.fixture
def pipe(pipe_once):
    yield from plain(pipe_once)


def run(pipe, steps=30, seed=0):
    # prompt embeddings given directly: the I2V pipeline's prompt cleaning needs ftfy, not installed here
    g = torch.Generator().manual_seed(1)
    prompt_embeds, negative_prompt_embeds = torch.randn(1, 16, 32, generator=g), torch.randn(1, 16, 32, generator=g)
    image = Image.fromarray((np.random.default_rng(0).random((HEIGHT, WIDTH, 3)) * 255).astype("uint8"))
    torch.manual_seed(seed)
    return pipe(image=image, prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
                num_frames=FRAMES, height=HEIGHT, width=WIDTH, num_inference_steps=steps, guidance_scale=3.0,
                generator=torch.Generator().manual_seed(seed), output_type="latent").frames


class Inputs:
    """The channels the transformer really receives and returns, on every real forward."""

    def __init__(self, pipe):
        self.shapes = []
        self.conditions = []
        self._handle = pipe.transformer.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs, out):
        sample = kwargs["hidden_states"]
        self.shapes.append((sample.shape[1], out[0].shape[1]))
        self.conditions.append(sample[:, 16:].clone())

    def close(self):
        self._handle.remove()


def test_wan_i2v_skips_calls_on_the_noisy_channels_and_remove_restores(pipe):
    plain_inputs = Inputs(pipe)
    try:
        base = run(pipe)
    finally:
        plain_inputs.close()
    inputs = Inputs(pipe)
    try:
        sadakit.accelerate(pipe)
        out = run(pipe)
    finally:
        inputs.close()
    rep = sadakit.report(pipe)
    assert rep.family == "wan_i2v" and rep.streams == ["cond", "uncond"]
    assert rep.denoiser_calls == 60 and rep.network_calls == len(inputs.shapes) < 50, rep.decisions
    assert set(inputs.shapes) == {(36, 16)}  # the condition channels still reach the network
    # ... unchanged: the same first-frame condition on every call, as without sadakit
    assert all(torch.equal(c, plain_inputs.conditions[0]) for c in inputs.conditions)
    assert out.shape == (1, 16, 3, 6, 8) and torch.isfinite(out).all() and psnr(out, base) > 35
    sadakit.remove(pipe)
    assert torch.equal(run(pipe), base)


def test_wan_i2v_partial_calls(pipe):
    pipe.scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0, stochastic_sampling=True)
    base = run(pipe, steps=16)
    seen = []
    handles = [b.norm1.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[1]))
               for b in pipe.transformer.blocks]
    try:
        sadakit.accelerate(pipe, sadakit.SADAConfig.criterion_only(skip_steps=False, max_token_fraction=1.0))
        out = run(pipe, steps=16)
    finally:
        for h in handles:
            h.remove()
    rep = sadakit.report(pipe)
    assert rep.partial_calls >= 2, rep.decisions
    assert max(seen) == GRID_TOKENS and min(seen) < GRID_TOKENS
    assert sum(seen) == rep.tokens_computed < rep.tokens_total == 32 * 2 * GRID_TOKENS
    assert torch.isfinite(out).all() and psnr(out, base) > 20
    sadakit.remove(pipe)
    assert torch.equal(run(pipe, steps=16), base)


def test_wan_i2v_declares_its_noisy_channels(pipe):
    assert "WanImageToVideoPipeline" in sadakit.supported_pipelines()
    assert wan_i2v.plugin.sadakit_family(pipe) == "wan_i2v"
    spec = wan_i2v.plugin.sadakit_denoiser(pipe)
    assert spec.noisy_channels == 16 and spec.channel_dim == 1 and spec.experts == ()


def test_wan_2_2_ti2v_image_to_video_is_refused_before_anything_changes(pipe):
    pipe.register_to_config(expand_timesteps=True)
    forward = pipe.transformer.forward
    try:
        with pytest.raises(UnsupportedPipelineError, match="per-token timestep"):
            sadakit.accelerate(pipe)
    finally:
        pipe.register_to_config(expand_timesteps=False)
    assert not sadakit.is_accelerated(pipe) and pipe.transformer.forward == forward
    # (diffusers' own cache_context leaves an empty registry on a transformer that has run)
    assert not getattr(getattr(pipe.transformer, "_diffusers_hook", None), "hooks", None)
