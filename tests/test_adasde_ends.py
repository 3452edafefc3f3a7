"""Learned grid ends (a free top and bottom, a last step to 0): validity, files, scheduler, distillation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import EulerDiscreteScheduler
from safetensors.torch import save_file

from sadakit.adasde import AdaSDEScheduler, CoefficientFileError, CoefficientMetadata, load_coefficients, save_coefficients
from sadakit.adasde.coefficients import METADATA_KEY
from sadakit.adasde.distill import DistillConfig, distill, reference_teacher
from sadakit.adasde.grid import MAX_END_LOGIT, MAX_GRID_LOGIT, end_logits_for, ends_from_logits, grid_with_ends
from sadakit.bundled.adasde_files import BUNDLED_ADASDE
from sadakit.core.adasde import init_raw_coefficients, make_sigmas, sample_adasde
from sadakit.testbeds.configs import get_testbed
from sadakit.testbeds.pipeline import SD_SCHEDULE, GMMEpsModel, GMMPipeline

SMIN, SMAX = 0.0292, 14.6  # SD's VE range: the testbed pipeline's model range


pytestmark = pytest.mark.usefixtures("flush_denormals")  # the testbed's posteriors underflow at small sigma


def test_learned_ends_stay_valid_for_any_logits() -> None:
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    for steps in (2, 3, 5, 8):
        corners = [torch.tensor([t, b], dtype=torch.float64) for t in (-MAX_END_LOGIT, MAX_END_LOGIT)
                   for b in (-MAX_END_LOGIT, MAX_END_LOGIT)]
        drawn = [(MAX_END_LOGIT * (2 * torch.rand(2, generator=gen, dtype=torch.float64) - 1)) for _ in range(20)]
        # extreme interior logits a file may hold (+-MAX_GRID_LOGIT) beside random ones: with the ends
        # close together a share of ~1e-12 once duplicated a node (a fresh seed found it)
        extreme = MAX_GRID_LOGIT * (2 * torch.randint(0, 2, (steps - 1,), generator=gen) - 1).to(torch.float64)
        for ends, interior in [(e, 4.0 * torch.randn(steps - 1, generator=gen, dtype=torch.float64))
                               for e in corners + drawn] + [(e, extreme) for e in corners]:  # every end a file may hold
            grid = grid_with_ends(interior, ends, SMIN, SMAX)
            assert grid.shape == (steps + 1,)
            assert float(grid[-1]) == 0.0  # the last step denoises fully
            assert SMIN <= float(grid[-2]) and float(grid[0]) <= SMAX * (1 + 1e-12)  # inside the model's range
            assert bool((grid[:-1] > grid[1:]).all()), grid  # strictly decreasing, bottom > 0
    # the inverse places the ends where asked (inside the range), and the interior logits follow them
    top, bottom = 7.0, 0.6
    logits = end_logits_for(top, bottom, SMIN, SMAX)
    t, b = ends_from_logits(logits, SMIN, SMAX)
    assert float(t) == pytest.approx(top, rel=1e-12) and float(b) == pytest.approx(bottom, rel=1e-12)
    # ends on the range's edges are pulled just inside it, not to an infinite logit
    assert bool(torch.isfinite(end_logits_for(SMAX, SMIN, SMIN, SMAX)).all())


def _ends_file(path: Path, afs: bool, steps: int = 5) -> torch.Tensor:
    """A churn-free Euler file with random learned ends and interior; returns its grid."""
    interior = torch.randn(steps - 1, dtype=torch.float64)
    ends = end_logits_for(float(torch.empty(()).uniform_(2.0, 14.0)), float(torch.empty(()).uniform_(0.05, 1.0)),
                          SMIN, SMAX)
    grid = grid_with_ends(interior, ends, SMIN, SMAX)
    nfe = steps - 1 if afs else steps
    record = {"top_logit": float(ends[0]), "bottom_logit": float(ends[1]), "sigma_lo": SMIN, "sigma_hi": SMAX}
    meta = CoefficientMetadata(model="testbed:gmm2d-8", nfe=nfe, solver="euler", analytic_first_step=afs,
                               schedule="learned", sigma_min=float(grid[-2]), sigma_max=float(grid[0]), gamma_max=0.0,
                               grid_logits=[float(v) for v in interior], grid_ends=record)
    save_coefficients(path, init_raw_coefficients(steps, 0.0, 0.0), grid, meta)
    return grid


@pytest.mark.parametrize("afs", [False, True])
def test_file_with_learned_ends_round_trips_and_the_scheduler_runs_its_grid(tmp_path: Path, afs: bool) -> None:
    path = tmp_path / "ends.safetensors"
    grid = _ends_file(path, afs)
    cf = load_coefficients(path)
    assert torch.equal(cf.sigmas, grid) and cf.meta.ends_at_zero
    sched = AdaSDEScheduler.from_file(path, SD_SCHEDULE)
    sched.set_timesteps(cf.meta.nfe)
    calls = grid[1:] if afs else grid  # the analytic first step makes no call at the top
    assert torch.allclose(sched.sigmas.double(), calls, rtol=1e-6) and float(sched.sigmas[-1]) == 0.0
    assert AdaSDEScheduler.from_config(sched.config).meta.grid_ends == cf.meta.grid_ends
    # in a diffusers-style loop the sample is the denoised estimate of the last call, as the core computes it
    pipe = GMMPipeline(GMMEpsModel("gmm2d-8"), EulerDiscreteScheduler(**SD_SCHEDULE))
    pipe.scheduler = AdaSDEScheduler.from_file(path, pipe=pipe)
    z = torch.randn(16, *pipe.testbed.data_shape, dtype=torch.float64)
    out = pipe(batch_size=16, num_inference_steps=cf.meta.nfe, latents=z)
    assert out.final_sigma == 0.0 and out.nfe == cf.meta.nfe
    tb = get_testbed("gmm2d-8")
    core = sample_adasde(lambda x, s: tb.denoiser.denoise(x, s), z.float() * float(grid[0]), grid, cf.raw,
                         analytic_first_step=afs, solver="euler", gamma_max=0.0).x
    assert torch.allclose(out.samples.float(), core, atol=1e-3, rtol=1e-3)


def _rewrite_metadata(src: Path, dst: Path, edit, sigmas_edit=None) -> None:
    cf = load_coefficients(src)
    data = json.loads(cf.meta.to_json())
    edit(data)
    sigmas = cf.sigmas.clone()
    if sigmas_edit is not None:
        sigmas_edit(sigmas)
    save_file({"raw": cf.raw.contiguous(), "sigmas": sigmas.contiguous()}, str(dst),
              metadata={METADATA_KEY: json.dumps(data), "format": "pt"})


@pytest.mark.parametrize(
    "edit, sigmas_edit, names",
    [
        (lambda d: d["grid_ends"].__setitem__("top_logit", 1e9), None, "metadata field 'grid_ends'"),
        (lambda d: d["grid_ends"].__setitem__("top_logit", float("nan")), None, "metadata field 'grid_ends'"),
        (lambda d: d["grid_ends"].pop("bottom_logit"), None, "metadata field 'grid_ends'"),
        (lambda d: d["grid_ends"].__setitem__("extra", 1.0), None, "metadata field 'grid_ends'"),
        (lambda d: d["grid_ends"].__setitem__("sigma_lo", 20.0), None, "metadata field 'grid_ends'"),
        (lambda d: d.__setitem__("grid_ends", [1.0, 2.0]), None, "metadata field 'grid_ends'"),
        (lambda d: d["grid_ends"].__setitem__("bottom_logit", d["grid_ends"]["bottom_logit"] + 0.3), None,
         "metadata field 'sigma_min'"),
        (lambda d: d["grid_ends"].__setitem__("sigma_hi", 20.0), None, "metadata field 'sigma_max'"),
        (lambda d: d["grid_logits"].pop(), None, "metadata field 'grid_logits'"),
        (lambda d: d.__setitem__("grid_logits", None), None, "metadata field 'grid_logits'"),
        (lambda d: None, lambda s: s.__setitem__(-1, 1e-3), "sigma grid"),
        (lambda d: None, lambda s: s.__setitem__(2, float(s[2]) * 1.01), "grid_logits"),
    ],
)
def test_corrupted_ends_are_refused_by_name(tmp_path: Path, edit, sigmas_edit, names: str) -> None:
    good = tmp_path / "good.safetensors"
    _ends_file(good, afs=False)
    bad = tmp_path / "bad.safetensors"
    _rewrite_metadata(good, bad, edit, sigmas_edit)
    with pytest.raises(CoefficientFileError) as err:
        load_coefficients(bad)
    message = str(err.value)
    assert names in message and str(bad) in message and "\n" not in message, message


def test_learned_ends_need_the_euler_form() -> None:
    record = {"top_logit": 1.0, "bottom_logit": 0.0, "sigma_lo": SMIN, "sigma_hi": SMAX}
    with pytest.raises(CoefficientFileError, match="grid_ends.*solver='euler'"):
        CoefficientMetadata(model="m", nfe=5, solver="adasde", sigma_min=0.5, sigma_max=5.0, grid_logits=[0.0] * 2,
                            grid_ends=record)


@pytest.mark.parametrize("spec", sorted(BUNDLED_ADASDE))
def test_every_shipped_file_still_loads(spec: str) -> None:
    bundled = BUNDLED_ADASDE[spec]
    names = bundled.available()
    assert names
    for name in names:
        cf = load_coefficients(bundled.directory / name)
        assert cf.meta.model == bundled.model_id and cf.meta.model_fingerprint is not None
        if cf.meta.grid_ends is None:  # the files from before learned ends: positive grid, unchanged
            assert float(cf.sigmas[-1]) == pytest.approx(cf.meta.sigma_min) and not cf.meta.ends_at_zero
        else:
            assert float(cf.sigmas[-1]) == 0.0 and float(cf.sigmas[-2]) == pytest.approx(cf.meta.sigma_min)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"solver": "adasde", "gamma_max": 0.0}, "solver='euler'"),
        ({"step_weight": 1.0}, "step_weight=0"),
        ({"start_scale": 3.0}, "start_scale"),
    ],
)
def test_a_learned_ends_run_that_cannot_work_is_refused_first(change: dict, message: str) -> None:
    cfg = DistillConfig(nfe=3, solver="euler", gamma_max=0.0, learn_grid=True, learn_ends=True, step_weight=0.0,
                        iterations=1, batch_size=2)
    calls = []
    with pytest.raises(ValueError, match=message):
        distill(lambda x, s: calls.append(1) or x, lambda b, g: torch.randn(b, 2, generator=g),
                DistillConfig(**{**__import__("attrs").asdict(cfg), **change}), model="t", progress=False,
                model_sigma_range=(SMIN, SMAX))
    assert not calls  # refused before any model call
    with pytest.raises(ValueError, match="model_sigma_range"):
        distill(lambda x, s: x, lambda b, g: torch.randn(b, 2, generator=g), cfg, model="t", progress=False)


def test_distilling_the_ends_lowers_the_loss_and_the_error_to_the_reference(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    tb = get_testbed("gmm2d-8")

    def denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return tb.denoiser.denoise(x, sigma)

    def noise(batch: int, g: torch.Generator) -> torch.Tensor:
        return torch.randn((batch, *tb.data_shape), generator=g)

    seed = int(torch.randint(0, 2**31, ()))
    cfg = DistillConfig(nfe=4, solver="euler", analytic_first_step=False, gamma_max=0.0, iterations=30, batch_size=64,
                        teacher_factor=4, sigma_min=0.1, sigma_max=SMAX, schedule="loglinear", learn_grid=True,
                        learn_ends=True, grid_lr=0.1, step_weight=0.0, seed=seed)
    out = tmp_path / "ends.safetensors"
    res = distill(denoiser, noise, cfg, model="testbed:gmm2d-8", output=out, progress=False,
                  model_sigma_range=(SMIN, SMAX))
    cf = load_coefficients(out)
    assert cf.meta.grid_ends is not None and float(cf.sigmas[-1]) == 0.0
    start = torch.cat([make_sigmas(cfg.steps - 1, 0.1, SMAX, "loglinear"), torch.zeros(1, dtype=torch.float64)])
    assert abs(float(cf.sigmas[-2]) - 0.1) > 1e-3 or abs(float(cf.sigmas[0]) - SMAX) > 1e-2  # an end moved
    assert sum(res.losses[-5:]) / 5 < 0.8 * res.initial_loss
    # on fresh noise the learned grid ends closer to the reference (from the model's top down to 0)
    z = torch.randn((512, *tb.data_shape), generator=torch.Generator().manual_seed(seed + 1))
    ref = reference_teacher(denoiser, z, make_sigmas(64, SMIN, SMAX, "karras").float())
    zero = init_raw_coefficients(cfg.steps, 0.0, 0.0)

    def err(grid: torch.Tensor) -> float:
        x = sample_adasde(denoiser, z * float(grid[0]), grid, zero, analytic_first_step=False, solver="euler",
                          gamma_max=0.0).x
        return float((x - ref).pow(2).mean().sqrt())

    assert err(cf.sigmas) < 0.9 * err(start), (err(cf.sigmas), err(start))


def test_a_teacher_pool_is_computed_once_and_trains_as_well() -> None:
    torch.set_num_threads(1)
    tb = get_testbed("gmm2d-8")
    calls = {"n": 0}

    def denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        return tb.denoiser.denoise(x, sigma)

    def noise(batch: int, g: torch.Generator) -> torch.Tensor:
        return torch.randn((batch, *tb.data_shape), generator=g)

    seed = int(torch.randint(0, 2**31, ()))
    cfg = DistillConfig(nfe=4, solver="euler", analytic_first_step=False, gamma_max=0.0, iterations=30, batch_size=64,
                        teacher_factor=3, sigma_min=0.1, sigma_max=SMAX, schedule="loglinear", learn_grid=True,
                        learn_ends=True, grid_lr=0.1, step_weight=0.0, seed=seed, teacher_pool=2)
    res = distill(denoiser, noise, cfg, model="t", progress=False, model_sigma_range=(SMIN, SMAX))
    teacher = 2 * cfg.teacher_factor * cfg.steps + 1  # mid-point steps, then the last denoising call
    # 2 pooled batches and the held-out batch pay the teacher; every iteration only the student's 4 calls
    assert calls["n"] == 3 * teacher + cfg.nfe + cfg.iterations * cfg.nfe
    assert sum(res.losses[-5:]) / 5 < 0.8 * res.initial_loss
    with pytest.raises(ValueError, match="teacher_pool=2 needs learn_ends"):
        distill(denoiser, noise, DistillConfig(nfe=3, teacher_pool=2), model="t", progress=False)


def test_finite_difference_grid_gradient_follows_autograd_on_a_smooth_model() -> None:
    torch.set_num_threads(1)
    tb = get_testbed("gmm2d-8")

    def denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return tb.denoiser.denoise(x, sigma)

    def noise(batch: int, g: torch.Generator) -> torch.Tensor:
        return torch.randn((batch, *tb.data_shape), generator=g)

    seed = int(torch.randint(0, 2**31, ()))
    cfg = DistillConfig(nfe=3, solver="euler", analytic_first_step=False, gamma_max=0.0, iterations=8, batch_size=32,
                        teacher_factor=3, sigma_min=0.2, sigma_max=7.0, schedule="loglinear", learn_grid=True,
                        learn_ends=True, grid_lr=0.1, step_weight=0.0, seed=seed, teacher_pool=1)
    by_autograd = distill(denoiser, noise, cfg, model="t", progress=False, model_sigma_range=(SMIN, SMAX))
    import attrs

    by_differences = distill(denoiser, noise, attrs.evolve(cfg, grid_fd_step=0.02), model="t", progress=False,
                             model_sigma_range=(SMIN, SMAX))
    start = torch.cat([make_sigmas(cfg.steps - 1, 0.2, 7.0, "loglinear"), torch.zeros(1, dtype=torch.float64)])
    moved = (by_autograd.coefficients.sigmas - start)[:-1].abs().max()
    assert float(moved) > 1e-3  # the grid moved, and both gradients moved it the same way
    assert torch.allclose(by_differences.coefficients.sigmas, by_autograd.coefficients.sigmas, rtol=1e-2)
    with pytest.raises(ValueError, match="grid_fd_step=0.02 needs learn_ends=True and gamma_max=0"):
        distill(denoiser, noise, attrs.evolve(cfg, gamma_max=0.3, grid_fd_step=0.02), model="t", progress=False,
                model_sigma_range=(SMIN, SMAX))


def test_a_pipeline_reference_grid_is_run_with_euler_and_the_log_loss_is_the_mean_psnr() -> None:
    from sadakit.adasde.distill import per_sample_log_mse

    tb = get_testbed("gmm2d-8")
    denoiser = lambda x, s: tb.denoiser.denoise(x, s)  # noqa: E731
    z = torch.randn(32, *tb.data_shape)
    grid = torch.cat([make_sigmas(9, SMIN, SMAX, "loglinear"), torch.zeros(1, dtype=torch.float64)])
    # a grid ending at 0: Euler node by node, as a pipeline's Euler scheduler runs it
    expected = sample_adasde(denoiser, z * SMAX, grid, init_raw_coefficients(10, 0.0, 0.0), analytic_first_step=False,
                             solver="euler", gamma_max=0.0).x
    assert torch.allclose(reference_teacher(denoiser, z, grid.float()), expected, atol=1e-5)
    a, b = torch.randn(6, 3, 4), torch.randn(6, 3, 4)
    psnr = -10 * torch.log10((a - b).pow(2).flatten(1).mean(1))
    assert float(per_sample_log_mse()(a, b)) == pytest.approx(float(-psnr.mean() * torch.log(torch.tensor(10.0)) / 10),
                                                             rel=1e-5)
    doubled = per_sample_log_mse(lambda x: 2 * x)(a, b)  # a decoder scaling by 2 adds log 4
    assert float(doubled - per_sample_log_mse()(a, b)) == pytest.approx(float(torch.log(torch.tensor(4.0))), rel=1e-5)
    with pytest.raises(ValueError, match="teacher_sigmas needs learn_ends"):
        distill(denoiser, lambda n, g: torch.randn(n, 2, generator=g), DistillConfig(nfe=3), model="t", progress=False,
                teacher_sigmas=grid)


def test_keep_best_ends_on_the_lowest_loss_grid() -> None:
    import attrs

    from sadakit.adasde.distill import _seed, final_state, latent_l2, reference_grid

    torch.set_num_threads(1)
    tb = get_testbed("gmm2d-8")
    denoiser = lambda x, s: tb.denoiser.denoise(x, s)  # noqa: E731
    noise = lambda n, g: torch.randn((n, *tb.data_shape), generator=g)  # noqa: E731
    seed = int(torch.randint(0, 2**31, ()))
    # a learning rate far too large: Adam overshoots, so the last grid is not the best one
    cfg = DistillConfig(nfe=3, solver="euler", analytic_first_step=False, gamma_max=0.0, iterations=8, batch_size=32,
                        teacher_factor=3, sigma_min=0.2, sigma_max=7.0, schedule="loglinear", learn_grid=True,
                        learn_ends=True, grid_lr=3.0, step_weight=0.0, seed=seed, teacher_pool=1, keep_best=True)
    res = distill(denoiser, noise, cfg, model="t", progress=False, model_sigma_range=(SMIN, SMAX))
    z = noise(32, torch.Generator().manual_seed(_seed(seed, -2, 0, 0)))  # the pooled batch
    target = reference_teacher(denoiser, z, reference_grid(cfg.teacher_factor * cfg.steps, SMIN, SMAX).float())
    grid = res.coefficients.sigmas
    out = final_state(denoiser, z * float(grid[0]), grid.float(), res.coefficients.raw, cfg, torch.Generator())
    assert float(latent_l2(out, target)) <= min(res.losses) * (1 + 1e-4)
    with pytest.raises(ValueError, match="keep_best=True needs"):
        distill(denoiser, noise, attrs.evolve(cfg, teacher_pool=2), model="t", progress=False,
                model_sigma_range=(SMIN, SMAX))
