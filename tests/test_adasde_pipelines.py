"""AdaSDE through real pipelines: the distillation adapter computes what the scheduler will run."""

from __future__ import annotations

import math

import pytest
import torch

import sadakit
from sadakit.adasde import AdaSDEScheduler, CoefficientMetadata, DistillConfig, load_coefficients, save_coefficients
from sadakit.adasde.pipeline_denoiser import distill_pipeline, pipeline_denoiser
from sadakit.core.adasde import init_raw_coefficients, make_sigmas, sample_adasde
from sadakit.errors import UnsupportedPipelineError
from sadakit.plugins.audio import fix_musicldm
from sadakit.testing import pipelines as tp

PROMPTS = ["a red circle", "a blue square"]


def _build(kind: str):
    if kind == "sd":
        return tp.tiny_sd_pipeline(), {"height": 64, "width": 64}
    if kind == "sd-v":
        return tp.tiny_sd_pipeline(prediction_type="v_prediction"), {"height": 64, "width": 64}
    if kind == "sdxl":
        return tp.tiny_sdxl_pipeline(), {"height": 64, "width": 48}
    if kind == "flux":
        return tp.tiny_flux_pipeline(), {"height": 64, "width": 64, "max_sequence_length": 32}
    if kind == "flux-true-cfg":  # one transformer call per CFG branch, as the bundled shapes-dit model runs
        return tp.tiny_flux_pipeline(guidance_embeds=False), {"height": 64, "width": 64, "max_sequence_length": 32,
                                                               "true_cfg_scale": 4.0, "negative_prompt": ""}
    pipe = tp.tiny_musicldm_pipeline()
    fix_musicldm(pipe)
    return pipe, {"audio_length_in_s": 0.64}


def _final_latents(out) -> torch.Tensor:
    return out.images if hasattr(out, "images") else torch.as_tensor(out.audios)


@pytest.mark.parametrize("kind", ["sd", "sd-v", "sdxl", "flux", "flux-true-cfg", "musicldm"])
def test_adapter_is_the_function_the_scheduler_runs(kind, tmp_path):
    """Sampling with the adapter as D reproduces the pipeline under AdaSDEScheduler.

    Random (not initial) coefficients and a churn, so every coefficient and the noise path matter.
    """
    pipe, kw = _build(kind)
    adapter = pipeline_denoiser(pipe, PROMPTS, guidance_scale=4.0, **kw)
    flow = adapter.chart.flow_matching
    assert adapter.cfg == (not flow)
    assert adapter.separate_cfg == (kind == "flux-true-cfg") and adapter.guidance_scale == 4.0
    smin, smax = adapter.sigma_range
    steps = 3
    nfe = 2 * steps if flow else 2 * steps - 1
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, ())))
    raw = init_raw_coefficients(steps, 0.2) + 0.5 * torch.randn((steps, 4), generator=g)
    sigmas = make_sigmas(steps, smin, smax)
    path = tmp_path / "c.safetensors"
    meta = CoefficientMetadata(
        model=adapter.model, nfe=nfe, analytic_first_step=not flow, sigma_min=smin, sigma_max=smax,
        prediction_type=adapter.prediction_type, guidance_scale=4.0,
    )
    save_coefficients(path, raw, sigmas, meta)
    pipe.scheduler = AdaSDEScheduler.from_file(path, pipe.scheduler, model=adapter.model, guidance_scale=4.0)
    z = torch.randn((len(PROMPTS), *adapter.latent_shape), generator=g)
    noise_seed = 0 if flow else 11  # Flux passes no generator to step: the scheduler's own is seeded 0
    out = pipe(
        prompt=PROMPTS, guidance_scale=4.0, num_inference_steps=nfe, latents=z.clone(), output_type="latent",
        generator=torch.Generator().manual_seed(11), **kw,
    )
    pipeline_final = _final_latents(out).reshape(z.shape)
    with torch.no_grad():
        res = sample_adasde(
            adapter, z * ((1 + smax) if flow else smax), sigmas, raw,
            generator=torch.Generator().manual_seed(noise_seed), analytic_first_step=not flow,
        )
    end = float(sigmas[-1])
    ours = res.x / ((1 + end) if flow else math.sqrt(1 + end * end))
    assert res.nfe == nfe == pipe.scheduler.nfe
    torch.testing.assert_close(ours, pipeline_final, rtol=1e-4, atol=1e-4 * float(ours.abs().max()))


def test_adapter_tiles_conditioning_and_matches_per_prompt_calls():
    """A batch of 5 samples uses prompts 0,1,0,1,0: each row equals the single-prompt adapter's answer."""
    pipe, kw = _build("sdxl")
    both = pipeline_denoiser(pipe, PROMPTS, guidance_scale=3.0, **kw)
    second = pipeline_denoiser(pipe, PROMPTS[1], guidance_scale=3.0, **kw)
    x = 5.0 * torch.randn((5, *both.latent_shape))
    sigma = torch.tensor(4.2)
    with torch.no_grad():
        d_both, d_second = both(x, sigma), second(x[[1, 3]], sigma)
    # float32 kernels differ by batch size (a batch of 5 vs 2): 1.2e-5 seen on outputs of ~0.1
    scale = float(d_second.abs().max())
    torch.testing.assert_close(d_both[[1, 3]], d_second, rtol=1e-4, atol=1e-4 * scale)
    # rows with the same prompt and the same input agree; different prompts differ
    y = x[:1].expand(5, *x.shape[1:]).contiguous()
    with torch.no_grad():
        d = both(y, sigma)
    torch.testing.assert_close(d[0], d[2])
    assert not torch.allclose(d[0], d[1])


def test_gradient_reaches_every_coefficient_through_a_network():
    """AdaSDE's time scale `a` only enters through the model's timestep: it must still learn."""
    from sadakit.adasde.distill import teacher_trajectory, trajectory_loss

    pipe, kw = _build("sd")
    adapter = pipeline_denoiser(pipe, PROMPTS, guidance_scale=4.0, **kw)
    smin, smax = adapter.sigma_range
    cfg = DistillConfig(nfe=5, sigma_min=smin, sigma_max=smax, teacher_factor=2)
    sigmas = make_sigmas(cfg.steps, smin, smax)
    x = smax * adapter.sample_noise(4, torch.Generator().manual_seed(1))
    teacher = teacher_trajectory(adapter, x, sigmas, cfg.teacher_factor)
    grads = []
    for checkpointed in (False, True):  # recomputing activations must not change the gradient
        adapter.checkpoint_calls = checkpointed
        raw = init_raw_coefficients(cfg.steps, cfg.gamma_init, cfg.gamma_max).requires_grad_(True)
        with adapter.frozen():
            trajectory_loss(adapter, x, sigmas, raw, teacher, cfg, torch.Generator().manual_seed(2)).backward()
            assert all(p.grad is None for p in adapter.module.parameters())
        assert all(p.requires_grad for p in adapter.module.parameters())
        grads.append(raw.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)
    grad = grads[0]
    # step 0 has no churn (gamma_0 = 0) and, with the analytic first step, no first evaluation
    for column, name in enumerate(("gamma", "r", "a", "c")):
        rows = grad[1:, column] if name == "gamma" else grad[:, column]
        assert rows.abs().max() > 0, f"no gradient reaches {name}"


@pytest.mark.parametrize("kind", ["musicldm", "flux"])
def test_distill_through_pipeline_then_sample(kind, tmp_path):
    pipe, kw = _build(kind)
    flow = kind == "flux"
    before = [p.requires_grad for p in pipe.components["unet" if not flow else "transformer"].parameters()]
    cfg = DistillConfig(nfe=6 if flow else 5, analytic_first_step=not flow, iterations=4, batch_size=4,
                        teacher_factor=2, checkpoint_every=2, lr=0.2)
    path = tmp_path / f"{kind}.safetensors"
    res = distill_pipeline(pipe, PROMPTS, cfg, guidance_scale=3.0, model=f"tiny-{kind}", call_kwargs=kw,
                           output=path, progress=False)
    assert len(res.losses) == 4 and all(math.isfinite(v) for v in res.losses)
    assert [p.requires_grad for p in pipe.components["unet" if not flow else "transformer"].parameters()] == before
    cf = load_coefficients(path)
    assert cf.meta.model == f"tiny-{kind}" and cf.meta.guidance_scale == 3.0
    assert cf.meta.prediction_type == ("flow" if flow else "epsilon")
    assert not torch.equal(cf.raw, init_raw_coefficients(cfg.steps, cfg.gamma_init, cfg.gamma_max))
    pipe.scheduler = AdaSDEScheduler.from_file(path, pipe.scheduler, model=f"tiny-{kind}", guidance_scale=3.0)

    def run(seed: int) -> torch.Tensor:
        out = pipe(prompt=PROMPTS, guidance_scale=3.0, num_inference_steps=cfg.nfe, output_type="latent",
                   generator=torch.Generator().manual_seed(seed), **kw)
        return _final_latents(out)

    a, b, c = run(0), run(0), run(1)
    assert pipe.scheduler.nfe == cfg.nfe
    assert torch.isfinite(a).all() and torch.equal(a, b) and not torch.equal(a, c)


def test_flow_pipeline_refuses_the_analytic_first_step():
    pipe, kw = _build("flux")
    with pytest.raises(ValueError, match="analytic_first_step=False"):
        distill_pipeline(pipe, PROMPTS, DistillConfig(nfe=5), call_kwargs=kw)


def test_adapter_refusals_leave_the_pipeline_usable():
    pipe, kw = _build("sd")
    with pytest.raises(ValueError, match="'latents' is set by the adapter"):
        pipeline_denoiser(pipe, PROMPTS, latents=torch.zeros(1), **kw)
    with pytest.raises(ValueError, match="non-empty list of strings"):
        pipeline_denoiser(pipe, [], **kw)
    sadakit.accelerate(pipe)
    with pytest.raises(UnsupportedPipelineError, match="sadakit.remove"):
        pipeline_denoiser(pipe, PROMPTS, **kw)
    sadakit.remove(pipe)
    control = tp.tiny_sd_controlnet_pipeline()
    with pytest.raises(UnsupportedPipelineError, match="ControlNet"):
        pipeline_denoiser(control, PROMPTS, image=torch.zeros(1, 3, 64, 64), **kw)


def test_capture_leaves_the_pipeline_as_it_was():
    pipe, kw = _build("sd")

    def run() -> torch.Tensor:
        return pipe(prompt=PROMPTS, num_inference_steps=3, output_type="latent",
                    generator=torch.Generator().manual_seed(5), **kw).images

    before = run()
    hooks_before = len(pipe.unet._forward_pre_hooks)
    pipeline_denoiser(pipe, PROMPTS, guidance_scale=6.0, **kw)
    assert len(pipe.unet._forward_pre_hooks) == hooks_before
    assert torch.equal(run(), before)


def test_flux_ids_stay_whole_when_their_length_equals_the_batch():
    """4 prompts and 4 image tokens: img_ids is (4, 3) but not per-row; tiling must leave it alone."""
    pipe = tp.tiny_flux_pipeline()
    adapter = pipeline_denoiser(pipe, ["a", "b", "c", "d"], height=32, width=32, max_sequence_length=32)
    assert adapter._bound.arguments["img_ids"].shape[0] == adapter.model_batch == 4
    x = torch.randn((4, *adapter.latent_shape))
    with torch.no_grad():
        full, part = adapter(x, torch.tensor(2.0)), adapter(x[:3], torch.tensor(2.0))
    torch.testing.assert_close(part, full[:3], rtol=1e-4, atol=1e-4 * float(full.abs().max()))  # batch 3 vs 4 kernels


@pytest.mark.parametrize(
    "config",
    [
        {"beta_schedule": "scaled_linear"},
        {"beta_schedule": "linear", "beta_start": 0.0015, "beta_end": 0.0195},
        {"beta_schedule": "squaredcos_cap_v2"},
        {"beta_schedule": "scaled_linear", "rescale_betas_zero_snr": True, "prediction_type": "v_prediction"},
    ],
)
def test_model_chart_inverts_the_diffusers_schedule(config):
    """The chart's sigma -> timestep map gives back the timesteps of diffusers' own Euler grid."""
    from diffusers import EulerDiscreteScheduler

    from sadakit.adasde.chart import ModelChart

    sched = EulerDiscreteScheduler(**config, timestep_spacing="trailing")
    sched.set_timesteps(int(torch.randint(7, 40, ())))
    chart = ModelChart.from_scheduler(sched)
    ab = sched.alphas_cumprod.double()
    # diffusers keeps alphas_cumprod in float32: 1 - ab loses ~1e-3 relative where ab ~ 0.9999
    torch.testing.assert_close(torch.exp(torch.as_tensor(chart.log_sigmas)), ((1 - ab) / ab).sqrt(), rtol=2e-3, atol=0)
    sigmas = sched.sigmas[:-1].double()  # the last one is 0
    want = sched.timesteps.double()
    got = torch.tensor([chart.timestep(float(s)) for s in sigmas], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=0, atol=2e-3)
    # the differentiable map is float32 on the model's device (no float64 there), same tolerance
    torch.testing.assert_close(chart.timestep_tensor(sigmas.float()).double(), want, rtol=0, atol=2e-3)


@pytest.mark.parametrize("solver", ["adasde", "euler", "heun", "midpoint"])
def test_same_seed_is_bit_identical_whatever_the_global_rng(solver, tmp_path):
    """The first model call's input may not depend on noise the pipeline's generator did not draw
    (regression: Euler after the analytic first step churned before its first call, with the
    global RNG inside ``scale_model_input``)."""
    from sadakit.core.adasde import count_nfe, steps_for_nfe

    pipe, kw = _build("sd")
    nfe = 5 if solver != "euler" else 4
    steps = steps_for_nfe(nfe, solver, True)
    assert count_nfe(steps, solver, True) == nfe
    smin, smax = 0.0292, 14.6
    raw = init_raw_coefficients(steps, 0.25)  # a real churn at every step after the first
    path = tmp_path / f"{solver}.safetensors"
    save_coefficients(path, raw, make_sigmas(steps, smin, smax), CoefficientMetadata(
        model="tiny", nfe=nfe, solver=solver, analytic_first_step=True, sigma_min=smin, sigma_max=smax))
    pipe.scheduler = AdaSDEScheduler.from_file(path, pipe.scheduler)

    def run(global_seed: int, seed: int = 3) -> torch.Tensor:
        torch.manual_seed(global_seed)
        return pipe(prompt=PROMPTS, num_inference_steps=nfe, output_type="latent",
                    generator=torch.Generator().manual_seed(seed), **kw).images

    first = run(0)
    assert torch.equal(run(12345), first)
    assert not torch.equal(run(0, seed=4), first)


def test_scheduler_runs_in_a_controlnet_pipeline(tmp_path):
    """Coefficients distilled on the base pipeline load into its ControlNet pipeline: the
    control branch is fed through the same (pure) ``scale_model_input``."""
    pipe = tp.tiny_sd_controlnet_pipeline()
    smin, smax = 0.0292, 14.6
    path = tmp_path / "c.safetensors"
    save_coefficients(path, init_raw_coefficients(3, 0.2), make_sigmas(3, smin, smax),
                      CoefficientMetadata(model="tiny", nfe=5, sigma_min=smin, sigma_max=smax))
    pipe.scheduler = AdaSDEScheduler.from_file(path, pipe.scheduler)
    image = tp.control_probe()

    def run(seed: int) -> torch.Tensor:
        return pipe(prompt=PROMPTS, image=image, num_inference_steps=5, height=64, width=64, output_type="latent",
                    generator=torch.Generator().manual_seed(seed)).images

    a, b, c = run(0), run(0), run(1)
    assert pipe.scheduler.nfe == 5 and torch.isfinite(a).all()
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("kind", ["sd", "sdxl", "flux", "musicldm"])
def test_a_call_at_another_guidance_scale_is_refused(kind, tmp_path):
    """Coefficients fit the CFG-combined denoiser at one scale; the pipeline call must use it."""
    pipe, kw = _build(kind)
    adapter = pipeline_denoiser(pipe, PROMPTS[0], guidance_scale=4.0, **kw)
    flow = adapter.chart.flow_matching
    smin, smax = adapter.sigma_range
    nfe = 4 if flow else 3
    path = tmp_path / "c.safetensors"
    save_coefficients(path, init_raw_coefficients(2, 0.0), make_sigmas(2, smin, smax), CoefficientMetadata(
        model=adapter.model, nfe=nfe, analytic_first_step=not flow, sigma_min=smin, sigma_max=smax,
        prediction_type=adapter.prediction_type, guidance_scale=4.0, gamma_max=0.0))

    def run(scale: float) -> torch.Tensor:
        out = pipe(prompt=PROMPTS[0], guidance_scale=scale, num_inference_steps=nfe, output_type="latent",
                   generator=torch.Generator().manual_seed(3), **kw)
        return _final_latents(out)

    pipe.scheduler = AdaSDEScheduler.from_file(path, pipe.scheduler)
    with pytest.raises(sadakit.adasde.CoefficientMismatchError,
                       match=rf"guidance_scale=4, {type(pipe).__name__} was called with guidance_scale=2.5"):
        run(2.5)
    right = run(4.0)  # the refusal left nothing half-done
    assert pipe.scheduler.nfe == nfe and torch.isfinite(right).all()
    pipe.scheduler = AdaSDEScheduler.from_file(path, pipe.scheduler, check_call_guidance=False)
    other = run(2.5)
    assert pipe.scheduler.nfe == nfe and not torch.equal(other, right)


def test_guidance_that_changes_nothing_is_not_a_mismatch():
    from sadakit.adasde.scheduler import _guidance_in_effect

    sd = tp.tiny_sd_pipeline()
    assert _guidance_in_effect(sd, 1.0) is None and _guidance_in_effect(sd, 0.5) is None  # CFG off either way
    assert _guidance_in_effect(sd, 7.5) == 7.5
    assert _guidance_in_effect(tp.tiny_flux_pipeline(), 1.0) == 1.0  # dev: an input of the transformer
    assert _guidance_in_effect(tp.tiny_flux_pipeline(guidance_embeds=False), 3.5) is None  # schnell ignores it


def test_true_cfg_is_distilled_and_checked_at_true_cfg_scale(tmp_path):
    """Flux with true CFG calls the transformer per branch: the file records true_cfg_scale and calls are checked on it."""
    pipe, kw = _build("flux-true-cfg")
    adapter = pipeline_denoiser(pipe, PROMPTS[0], **kw)
    assert adapter.separate_cfg and adapter.guidance_scale == 4.0
    x = torch.randn((1, *adapter.latent_shape))
    sigma = float(torch.empty(()).uniform_(0.5, 5.0))
    single = pipeline_denoiser(pipe, PROMPTS[0], **{**kw, "true_cfg_scale": 1.0})  # one call per step: no CFG
    assert not single.separate_cfg
    with torch.no_grad():
        cond = single(x, sigma)
        guided = adapter(x, sigma)
    assert not torch.allclose(guided, cond)
    smin, smax = adapter.sigma_range
    path = tmp_path / "c.safetensors"
    save_coefficients(path, init_raw_coefficients(2, 0.0), make_sigmas(2, smin, smax), CoefficientMetadata(
        model=adapter.model, nfe=4, analytic_first_step=False, sigma_min=smin, sigma_max=smax,
        prediction_type=adapter.prediction_type, guidance_scale=4.0, gamma_max=0.0))
    pipe.scheduler = AdaSDEScheduler.from_file(path, pipe.scheduler)
    call = {k: v for k, v in kw.items() if k != "true_cfg_scale"}
    with pytest.raises(sadakit.adasde.CoefficientMismatchError,
                       match=r"true_cfg_scale: .*guidance_scale=4, FluxPipeline was called with true_cfg_scale=2.5"):
        pipe(prompt=PROMPTS[0], true_cfg_scale=2.5, num_inference_steps=4, output_type="latent", **call)
    out = pipe(prompt=PROMPTS[0], true_cfg_scale=4.0, num_inference_steps=4, output_type="latent", **call)
    assert pipe.scheduler.nfe == 4 and torch.isfinite(out.images).all()


def test_decoded_loss_unpacks_flux_latents_like_the_pipeline():
    """--loss decoded-log decodes a Flux state as the pipeline does (unpacked 2x2 patches, scale and shift)."""
    from sadakit.adasde.cli import _vae_decode

    pipe, kw = _build("flux")
    call = dict(prompt=PROMPTS[0], num_inference_steps=2, **kw)
    latents = pipe(**call, output_type="latent", generator=torch.Generator().manual_seed(5)).images
    images = pipe(**call, output_type="pt", generator=torch.Generator().manual_seed(5)).images
    assert latents.ndim == 3  # packed tokens
    decoded = (_vae_decode(pipe, kw["height"], kw["width"])(latents) / 2 + 0.5).clamp(0, 1)
    torch.testing.assert_close(decoded, images, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close((_vae_decode(pipe)(latents) / 2 + 0.5).clamp(0, 1), images, rtol=1e-4, atol=1e-4)


def test_a_two_call_pipeline_that_rescales_its_guidance_is_refused():
    """The adapter combines the branch calls as u + g (c - u); a pipeline that renormalises (QwenImage) is refused."""
    from sadakit.adasde.pipeline_denoiser import _Captured, _check_branch_combination

    cond, uncond = torch.randn(2, 16, 8), torch.randn(2, 16, 8)
    g = float(torch.empty(()).uniform_(1.5, 6.0))
    guided = uncond + g * (cond - uncond)
    _check_branch_combination("P", _Captured([], [cond, uncond], guided), g)  # the combination it replays: fine
    renormalised = guided * (cond.norm(dim=-1, keepdim=True) / guided.norm(dim=-1, keepdim=True))
    with pytest.raises(UnsupportedPipelineError, match=rf"P: its two denoiser calls .* not combined as u \+ {g:g} \(c - u\)"):
        _check_branch_combination("P", _Captured([], [cond, uncond], renormalised), g)
    with pytest.raises(UnsupportedPipelineError, match="not combined"):
        _check_branch_combination("P", _Captured([], [cond, uncond], guided), g + 1.0)  # another scale
