"""SADA on real (tiny, random-weight) SD/SDXL pipelines: exactness, counting, schedulers, errors."""

import attrs
import diffusers
import pytest
import torch

import sadakit
from sadakit.errors import NotAcceleratedError, UnsupportedPipelineError

PROMPTS = ["a red square on the left", "a blue circle at the top"]


def generate(pipe, steps=20, prompts=PROMPTS, seed=0, **kw):
    kw.setdefault("height", 64)
    kw.setdefault("width", 96)
    return pipe(
        prompt=prompts, num_inference_steps=steps, output_type="pt",
        generator=torch.Generator().manual_seed(seed), **kw,
    ).images


def test_disabled_and_removed_are_bit_identical(sdxl):
    base = generate(sdxl)
    sadakit.accelerate(sdxl, sadakit.SADAConfig.disabled())
    assert torch.equal(generate(sdxl), base)
    rep = sadakit.report(sdxl)
    assert rep.decisions == "F" * 20 and rep.network_calls == 20
    sadakit.accelerate(sdxl)
    accelerated = generate(sdxl)
    assert sadakit.remove(sdxl) is True
    assert torch.equal(generate(sdxl), base)
    # nothing left on the modules
    assert not hasattr(sdxl.unet, "_diffusers_hook")
    assert "forward" not in sdxl.unet.__dict__
    assert all("forward" not in m.__dict__ for m in sdxl.unet.modules())
    assert torch.isfinite(accelerated).all()


def test_report_counts_match_real_forwards(sdxl, unet_counter):
    sdxl.scheduler = diffusers.EulerDiscreteScheduler.from_config(sdxl.scheduler.config, use_karras_sigmas=True)
    sadakit.accelerate(sdxl)
    unet_counter.reset()
    out = generate(sdxl, steps=20, guidance_scale=1.0)
    rep = sadakit.report(sdxl)
    assert torch.isfinite(out).all()
    assert rep.denoiser_calls == 20
    assert rep.network_calls == unet_counter.count
    assert sum(rep.per_sample_computed) == unet_counter.rows
    assert rep.network_calls < 20, rep.decisions  # whole calls skipped
    assert rep.skipped_calls == 20 - rep.network_calls
    for c, s in zip(rep.per_sample_computed, rep.per_sample_skipped):
        assert c + s == 20
    # warm-up and final calls are always computed
    assert rep.decisions[:4] == "FFFF" and rep.decisions[-2:] == "FF"
    # late phase (from call 5 of 20, automatic interval 2 below 40 calls): every 2nd call computed
    assert rep.decisions[5:18] == "FS" * 6 + "F", rep.decisions


def test_criterion_only_respects_skip_cap(sdxl, unet_counter):
    sdxl.scheduler = diffusers.EulerDiscreteScheduler.from_config(sdxl.scheduler.config, use_karras_sigmas=True)
    sadakit.accelerate(sdxl, sadakit.SADAConfig.criterion_only())
    unet_counter.reset()
    generate(sdxl, steps=20, guidance_scale=1.0)
    rep = sadakit.report(sdxl)
    assert rep.network_calls == unet_counter.count
    assert rep.skipped_calls >= 1, rep.decisions
    assert "SS" not in rep.decisions  # default cap: one consecutive skip
    assert rep.decisions[:4] == "FFFF" and rep.decisions[-2:] == "FF"


def test_cfg_halves_decide_together_and_rows_are_independent(sdxl, unet_counter):
    sadakit.accelerate(sdxl, sadakit.SADAConfig.criterion_only())
    decided = []
    for seed in range(3):
        unet_counter.reset()
        generate(sdxl, steps=24, seed=seed, guidance_scale=5.0)
        rep = sadakit.report(sdxl)
        assert rep.batch_size == 4
        # uncond/cond rows of one prompt (i, i + 2) share every decision
        assert rep.per_sample_skipped[0] == rep.per_sample_skipped[2]
        assert rep.per_sample_skipped[1] == rep.per_sample_skipped[3]
        assert sum(rep.per_sample_computed) == unet_counter.rows
        decided.append(tuple(rep.per_sample_skipped))
    # per-sample decisions: some generation skipped rows of one prompt but not the other
    assert any(d[0] != d[1] for d in decided) or any("M" in sadakit.report(sdxl).decisions for _ in [0])


def test_mixed_calls_compute_only_unskipped_rows(sdxl, unet_counter):
    sadakit.accelerate(sdxl, sadakit.SADAConfig.criterion_only())
    unet_counter.reset()
    generate(sdxl, steps=20, guidance_scale=5.0)
    rep = sadakit.report(sdxl)
    mixed = rep.decisions.count("M")
    full_rows = (rep.decisions.count("F") + rep.decisions.count("P")) * 4
    assert mixed >= 1, rep.decisions
    assert unet_counter.rows < 20 * 4 and unet_counter.rows > full_rows


@pytest.mark.parametrize(
    "name,make",
    [
        ("euler", lambda c: diffusers.EulerDiscreteScheduler.from_config(c)),
        ("edm-euler", lambda c: diffusers.EDMEulerScheduler()),
        ("dpm++2m", lambda c: diffusers.DPMSolverMultistepScheduler.from_config(c)),
        ("ddim", lambda c: diffusers.DDIMScheduler.from_config(c)),
        ("unipc", lambda c: diffusers.UniPCMultistepScheduler.from_config(c)),
        ("heun", lambda c: diffusers.HeunDiscreteScheduler.from_config(c)),
    ],
)
def test_schedulers(sdxl, unet_counter, name, make):
    """Every solver: hooks alone change nothing; SADA skips per its schedule and counts right.

    Fidelity is not asserted here: random-weight trajectories say nothing about it (see the
    Gaussian-mixture testbed tests for that)."""
    sdxl.scheduler = make(sdxl.scheduler.config)
    base = generate(sdxl, steps=12, guidance_scale=1.0)
    sadakit.accelerate(sdxl, sadakit.SADAConfig.disabled())
    assert torch.equal(generate(sdxl, steps=12, guidance_scale=1.0), base)
    sadakit.accelerate(sdxl)
    unet_counter.reset()
    out = generate(sdxl, steps=12, guidance_scale=1.0)
    rep = sadakit.report(sdxl)
    assert out.shape == base.shape and torch.isfinite(out).all()
    assert rep.denoiser_calls == len(sdxl.scheduler.timesteps)
    assert rep.network_calls == unet_counter.count < rep.denoiser_calls, rep.decisions
    assert not torch.equal(out, base)


def test_token_sparsity_computes_fewer_tokens_non_square(sdxl):
    cfg = sadakit.SADAConfig(skip_steps=False, token_sparsity=True, max_token_fraction=1.0)
    sadakit.accelerate(sdxl, cfg)
    out = generate(sdxl, steps=20, height=64, width=96)
    rep = sadakit.report(sdxl)
    assert torch.isfinite(out).all() and out.shape[-2:] == (64, 96)
    assert rep.partial_calls >= 1, rep.decisions
    assert rep.tokens_computed < rep.tokens_total
    assert rep.skipped_calls == 0


def test_token_sparsity_all_resolutions(sdxl):
    cfg = sadakit.SADAConfig(skip_steps=False, token_resolutions="all", max_token_fraction=1.0)
    sadakit.accelerate(sdxl, cfg)
    out = generate(sdxl, steps=16, height=96, width=64)
    rep = sadakit.report(sdxl)
    assert torch.isfinite(out).all() and rep.partial_calls >= 1


def test_v_prediction_sd(sd_vpred_pipe):
    pipe = sd_vpred_pipe
    base = generate(pipe, steps=16, height=64, width=64)
    sadakit.accelerate(pipe)
    try:
        out = generate(pipe, steps=16, height=64, width=64)
        rep = sadakit.report(pipe)
        assert rep.family == "sd" and "v_prediction" in rep.parameterization
        assert torch.isfinite(out).all()
    finally:
        sadakit.remove(pipe)
    assert torch.equal(generate(pipe, steps=16, height=64, width=64), base)


def test_state_resets_after_exception_mid_generation(sdxl):
    sadakit.accelerate(sdxl)
    ref = generate(sdxl, steps=16)
    ref_decisions = sadakit.report(sdxl).decisions

    def boom(pipe, i, t, kwargs):
        if i == 9:
            raise RuntimeError("interrupted")
        return kwargs

    with pytest.raises(RuntimeError, match="interrupted"):
        generate(sdxl, steps=16, callback_on_step_end=boom)
    again = generate(sdxl, steps=16)
    assert torch.equal(again, ref)
    assert sadakit.report(sdxl).decisions == ref_decisions


def test_apply_twice_and_remove_twice(sdxl):
    base = generate(sdxl, steps=8)
    sadakit.accelerate(sdxl)
    sadakit.accelerate(sdxl, sadakit.SADAConfig.disabled())  # replaces the config
    assert torch.equal(generate(sdxl, steps=8), base)
    assert sadakit.remove(sdxl) is True
    assert sadakit.remove(sdxl) is False
    assert not sadakit.is_accelerated(sdxl)


def test_unsupported_pipeline_lists_supported():
    class NotAPipeline:
        pass

    with pytest.raises(UnsupportedPipelineError) as err:
        sadakit.accelerate(NotAPipeline())
    msg = str(err.value)
    assert "NotAPipeline" in msg and "StableDiffusionXLPipeline" in msg


def test_invalid_config_values():
    with pytest.raises(ValueError, match="warmup_calls must be an integer >= 3"):
        sadakit.SADAConfig(warmup_calls=1)
    with pytest.raises(ValueError, match="max_token_fraction"):
        sadakit.SADAConfig(max_token_fraction=0.0)
    with pytest.raises(ValueError, match="extrapolation must be one of"):
        sadakit.SADAConfig(extrapolation="taylor")
    with pytest.raises(ValueError, match="extrapolation_order"):
        attrs.evolve(sadakit.SADAConfig(), extrapolation_order=7)


def test_wrong_config_type_and_unsupported_scheduler_leave_pipeline_untouched(sdxl):
    with pytest.raises(TypeError, match="SADAConfig"):
        sadakit.accelerate(sdxl, {"skip_steps": True})
    sdxl.scheduler = diffusers.FlowMatchEulerDiscreteScheduler()
    with pytest.raises(UnsupportedPipelineError, match="FlowMatchEulerDiscreteScheduler"):
        sadakit.accelerate(sdxl)
    assert not sadakit.is_accelerated(sdxl)
    assert not hasattr(sdxl.unet, "_diffusers_hook")


def test_report_errors_and_default_config(sdxl):
    with pytest.raises(NotAcceleratedError):
        sadakit.report(object())
    assert isinstance(sadakit.default_config(sdxl), sadakit.SADAConfig)
    text = str(sadakit.GenerationReport(family="x", decisions="FFS", denoiser_calls=3))
    assert "skipped: 1" in text


@pytest.mark.parametrize("denoising_end", [0.8, 0.45])
def test_denoising_end_keeps_the_final_calls_computed(sdxl, denoising_end):
    """SDXL's base stops early for a refiner: the run's last calls are its final calls."""
    steps = 20
    cutoff = round(1000 - denoising_end * 1000)
    sdxl.scheduler.set_timesteps(steps)
    expected = sum(int(t) >= cutoff for t in sdxl.scheduler.timesteps)
    sadakit.accelerate(sdxl)
    generate(sdxl, steps=steps, denoising_end=denoising_end)
    rep = sadakit.report(sdxl)
    assert len(rep.decisions) == expected < steps
    assert rep.decisions.endswith("F" * sadakit.SADAConfig().final_calls), rep.decisions
    assert "S" in rep.decisions
