"""Wan 2.1 image-to-video (tiny, random weights) is claimed and refused with its reason before
anything changes: the transformer's sample is the noisy latent with image-condition channels
concatenated (36 channels in, 16 out), so SADA's x0 = x - sigma * v has no sample in the output's
chart that the contract can name."""

import numpy as np
import pytest
import torch
from PIL import Image

import sadakit
from sadakit.errors import UnsupportedPipelineError
from sadakit.plugins.video import wan_i2v
from sadakit.testing.video_pipelines_2 import tiny_wan_i2v_pipeline

FRAMES, HEIGHT, WIDTH = 9, 48, 64  # non-square


@pytest.fixture(scope="module")
def pipe():
    return tiny_wan_i2v_pipeline()


def run(pipe, steps=3, seed=0):
    # prompt embeddings given directly: the I2V pipeline's prompt cleaning needs ftfy, not installed here
    g = torch.Generator().manual_seed(1)
    prompt_embeds, negative_prompt_embeds = torch.randn(1, 16, 32, generator=g), torch.randn(1, 16, 32, generator=g)
    image = Image.fromarray((np.random.default_rng(0).random((HEIGHT, WIDTH, 3)) * 255).astype("uint8"))
    return pipe(image=image, prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
                num_frames=FRAMES, height=HEIGHT, width=WIDTH, num_inference_steps=steps, guidance_scale=3.0,
                generator=torch.Generator().manual_seed(seed), output_type="latent").frames


REASON = ("WanImageToVideoPipeline: the transformer's hidden_states are 36 channels: the 16 noisy latent channels "
          "with 20 image-condition channels concatenated by the pipeline")


def test_wan_i2v_is_refused_before_anything_changes(pipe):
    forward = pipe.transformer.forward
    modules = dict(pipe.transformer.named_modules())
    scheduler = pipe.scheduler
    with pytest.raises(UnsupportedPipelineError) as caught:
        sadakit.accelerate(pipe)
    message = str(caught.value)
    assert message.startswith(REASON), message
    assert "cannot name the noisy channels of its sample argument" in message
    assert not sadakit.is_accelerated(pipe)
    assert pipe.transformer.forward == forward and pipe.scheduler is scheduler
    assert dict(pipe.transformer.named_modules()) == modules
    assert not pipe.transformer._forward_pre_hooks and not pipe.transformer._forward_hooks
    # the pipeline still runs as before: the transformer really takes 36 channels and returns 16
    shapes = []
    handle = pipe.transformer.register_forward_hook(
        lambda module, args, kwargs, out: shapes.append((kwargs["hidden_states"].shape[1], out[0].shape[1])),
        with_kwargs=True)
    try:
        out = run(pipe)
    finally:
        handle.remove()
    assert out.shape == (1, 16, 3, 6, 8) and torch.isfinite(out).all()
    assert set(shapes) == {(36, 16)} and len(shapes) == 6  # 3 steps x (cond, uncond)


def test_wan_i2v_is_claimed_with_its_family(pipe):
    assert "WanImageToVideoPipeline" in sadakit.supported_pipelines()
    assert wan_i2v.plugin.sadakit_family(pipe) == "wan_i2v"
    with pytest.raises(UnsupportedPipelineError, match="image-condition channels"):
        wan_i2v.plugin.sadakit_validate(pipe, sadakit.SADAConfig())


def test_wan_2_2_layouts_are_refused_with_their_own_reasons(pipe):
    class Config(dict):
        __getattr__ = dict.get

    class Fake:
        transformer = pipe.transformer
        transformer_2 = None
        config = Config(expand_timesteps=True)

    assert "per-token timestep" in wan_i2v.why_refused(Fake())
    Fake.config = Config(expand_timesteps=False)
    Fake.transformer_2 = pipe.transformer
    assert "second transformer" in wan_i2v.why_refused(Fake())
