"""Generation boundaries that cannot be missed, pipelines sharing a denoiser, copies.

The session learns the start and span of every pipeline call from the pipeline itself (its
progress bar opens the denoising loop), not from noise levels: an interrupted generation can
no longer leak into the next one, and a sibling sharing the denoiser runs it plain.
"""

import copy

import diffusers
import pytest
import torch

import sadakit
from sadakit.testing import tiny_flux_controlnet_pipeline, tiny_sd_pipeline
from sadakit.testing.pipelines import control_probe


class Interrupt(Exception):
    pass


def stop_at(step):
    def callback(pipe, i, t, kwargs):
        if i == step:
            raise Interrupt
        return kwargs

    return callback


@pytest.fixture(scope="module")
def sd():
    return tiny_sd_pipeline(seed=3)


@pytest.fixture
def plain_sd(sd):
    sadakit.remove(sd)
    yield sd
    sadakit.remove(sd)


def txt2img(pipe, steps=12, seed=0, **kw):
    return pipe(prompt=["a red square", "a blue circle"], num_inference_steps=steps, height=64, width=64,
                generator=torch.Generator().manual_seed(seed), output_type="pt", **kw).images


def fresh_accelerated(pipe, fn, config=None):
    sadakit.remove(pipe)
    sadakit.accelerate(pipe, config)
    return fn(), sadakit.report(pipe)


@pytest.mark.parametrize("step", [0, 3])
def test_an_interrupted_generation_does_not_leak_into_the_next(plain_sd, step):
    config = sadakit.SADAConfig.criterion_only()
    expected, expected_report = fresh_accelerated(plain_sd, lambda: txt2img(plain_sd, steps=20), config)
    sadakit.remove(plain_sd)
    sadakit.accelerate(plain_sd, config)
    with pytest.raises(Interrupt):
        txt2img(plain_sd, steps=20, callback_on_step_end=stop_at(step))
    out = txt2img(plain_sd, steps=20)
    rep = sadakit.report(plain_sd)
    assert torch.equal(out, expected)
    assert rep.decisions == expected_report.decisions and rep.denoiser_calls == 20


def test_img2img_interrupted_then_another_strength(sd):
    img2img = diffusers.StableDiffusionImg2ImgPipeline(**sd.components)
    img2img.set_progress_bar_config(disable=True)
    image = torch.rand(1, 3, 64, 64)

    def run(strength, **kw):
        return img2img(prompt="a red square", image=image, strength=strength, num_inference_steps=10,
                       generator=torch.Generator().manual_seed(1), output_type="pt", **kw).images

    sadakit.remove(sd)
    try:
        expected, expected_report = fresh_accelerated(img2img, lambda: run(0.5))
        assert expected_report.denoiser_calls == 5
        sadakit.remove(img2img)
        sadakit.accelerate(img2img)
        with pytest.raises(Interrupt):
            run(1.0, callback_on_step_end=stop_at(2))
        out = run(0.5)
        rep = sadakit.report(img2img)
    finally:
        sadakit.remove(img2img)
    assert torch.equal(out, expected)
    assert rep.denoiser_calls == 5 and rep.decisions == expected_report.decisions


def test_after_a_refused_flux_controlnet_true_cfg_the_next_run_is_clean():
    pipe = tiny_flux_controlnet_pipeline()

    def run(**kw):
        return pipe(prompt=["a red square"], control_image=control_probe(3, 64, 64), num_inference_steps=10,
                    height=64, width=64, max_sequence_length=16, generator=torch.Generator().manual_seed(0),
                    output_type="pt", **kw).images

    expected, expected_report = fresh_accelerated(pipe, run)
    with pytest.raises(sadakit.UnsupportedPipelineError, match="true_cfg_scale"):
        run(negative_prompt=["blurry"], true_cfg_scale=2.0)
    assert torch.equal(run(), expected)
    assert sadakit.report(pipe).decisions == expected_report.decisions


def test_a_from_pipe_sibling_runs_the_shared_denoiser_plain(plain_sd):
    sibling = diffusers.StableDiffusionPipeline.from_pipe(plain_sd)
    sibling.set_progress_bar_config(disable=True)
    assert sibling.unet is plain_sd.unet
    sibling_plain = txt2img(sibling, seed=5)
    sadakit.accelerate(plain_sd, sadakit.SADAConfig.criterion_only())
    txt2img(plain_sd, steps=20)
    own = sadakit.report(plain_sd)
    assert torch.equal(txt2img(sibling, seed=5), sibling_plain)  # not half-accelerated
    assert sadakit.report(plain_sd) is own and own.denoiser_calls == 20  # no sibling calls in it
    with pytest.raises(sadakit.NotAcceleratedError):
        sadakit.report(sibling)
    with pytest.raises(RuntimeError, match="another pipeline object sharing it"):
        sadakit.accelerate(sibling)
    assert not sadakit.is_accelerated(sibling)


def test_deepcopy_of_an_accelerated_pipeline_says_what_to_do(plain_sd):
    sadakit.accelerate(plain_sd)
    with pytest.raises(TypeError, match=r"sadakit.remove\(pipe\); twin = copy.deepcopy\(pipe\)"):
        copy.deepcopy(plain_sd)
    assert sadakit.is_accelerated(plain_sd)
    base_fast = txt2img(plain_sd)
    sadakit.remove(plain_sd)
    twin = copy.deepcopy(plain_sd)
    sadakit.accelerate(plain_sd)
    sadakit.accelerate(twin)
    assert torch.equal(txt2img(twin), base_fast) and torch.equal(txt2img(plain_sd), base_fast)
    assert sadakit.report(twin) is not sadakit.report(plain_sd)
    sadakit.remove(twin)


@pytest.mark.parametrize("name", ["LCMScheduler", "TCDScheduler"])
def test_consistency_samplers_are_named_not_silently_ignored(plain_sd, name):
    scheduler = plain_sd.scheduler
    plain_sd.scheduler = getattr(diffusers, name).from_config(scheduler.config)
    try:
        with pytest.warns(UserWarning, match=f"{name} is a consistency sampler"):
            sadakit.accelerate(plain_sd)
        txt2img(plain_sd, steps=12)
        rep = sadakit.report(plain_sd)
    finally:
        sadakit.remove(plain_sd)
        plain_sd.scheduler = scheduler
    assert rep.decisions == "F" * 12
    assert any(f"{name} is a consistency sampler" in n for n in rep.notes)
