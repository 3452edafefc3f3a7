"""The multistep solver form: its untrained step is DPM-Solver++(2M) (or Euler), files, scheduler, distillation."""

from __future__ import annotations

import math
from pathlib import Path

import attrs
import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler

from sadakit.adasde import AdaSDEScheduler, CoefficientFileError, CoefficientMetadata, load_coefficients, save_coefficients
from sadakit.adasde.cli import main as cli_main
from sadakit.adasde.distill import DistillConfig, distill, final_state, reference_grid, reference_teacher
from sadakit.adasde.grid import end_logits_for, grid_with_ends, logits_for_grid
from sadakit.core.adasde import (
    MULTISTEP_WEIGHT_BOUND,
    init_multistep_raw,
    make_sigmas,
    multistep_effective_weights,
    multistep_weights,
    sample_adasde,
)
from sadakit.testbeds.configs import get_testbed
from sadakit.testbeds.pipeline import SD_SCHEDULE, GMMEpsModel, GMMPipeline, sd_alphas_cumprod

SMIN, SMAX = 0.0292, 14.6  # SD's VE range: the testbed pipeline's model range


pytestmark = pytest.mark.usefixtures("flush_denormals")  # the testbed's posteriors underflow at small sigma


def _smooth_denoiser(w: torch.Tensor):
    """A fixed nonlinear ``D(x, sigma)`` of any dtype (the float64 reference runs the same function)."""

    def d(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = sigma.to(x.dtype)
        return torch.tanh(x @ w.to(x.dtype)) / (1.0 + 0.3 * s) + 0.1 * x / (1.0 + s * s)

    return d


def _dpm_solver_2m_float64(d, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2) in the VE form, float64: first step first order, and a step to 0
    first order too (diffusers' ``final_sigmas_type='zero'``)."""
    x = x.to(torch.float64)
    s = sigmas.to(torch.float64)
    prev = None
    for n in range(len(s) - 1):
        den = d(x, s[n])
        if float(s[n + 1]) == 0.0:
            x = den
            break
        h = math.log(float(s[n] / s[n + 1]))
        if prev is None:
            d_eff = den
        else:
            r = math.log(float(s[n - 1] / s[n])) / h
            d_eff = (1 + 1 / (2 * r)) * den - 1 / (2 * r) * prev
        x = math.exp(-h) * x + (1 - math.exp(-h)) * d_eff
        prev = den
    return x


@pytest.mark.parametrize("ends_at_zero", [False, True])
def test_untrained_multistep_is_dpm_solver_2m_and_the_euler_start_is_euler(ends_at_zero: bool) -> None:
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    dim = 6
    w = torch.randn(dim, dim, generator=gen, dtype=torch.float64) / math.sqrt(dim)
    d = _smooth_denoiser(w)
    steps = int(torch.randint(3, 8, (), generator=gen))
    # a random strictly decreasing grid (not log-linear: the 2M weights then differ per step); neighbouring
    # log-sigma steps within a factor 3 of each other, as any usable grid (the Euler start needs |1/(2r)| < 4)
    drops = torch.rand(steps, generator=gen, dtype=torch.float64) + 0.5
    log_hi, log_lo = math.log(float(torch.empty(()).uniform_(3.0, 20.0))), math.log(0.05)
    cuts = torch.cumsum(drops, 0)[:-1] / drops.sum()
    nodes = torch.exp(torch.cat([torch.tensor([log_hi]), log_hi + (log_lo - log_hi) * cuts,
                                 torch.tensor([log_lo])]).to(torch.float64))
    grid = torch.cat([nodes[:-1], torch.zeros(1, dtype=torch.float64)]) if ends_at_zero else nodes
    x0 = torch.randn(16, dim, generator=gen, dtype=torch.float64) * float(grid[0])
    expected = _dpm_solver_2m_float64(d, x0, grid)
    raw = init_multistep_raw(grid, "dpm++2m")
    assert not bool(raw.any())  # 2M is raw zeros
    got = sample_adasde(d, x0.float(), grid, raw, analytic_first_step=False, solver="multistep", gamma_max=0.0)
    assert got.nfe == steps
    assert torch.allclose(got.x.double(), expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
    # the Euler start cancels the history weights: exactly the Euler step on the same grid
    euler = sample_adasde(d, x0.float(), grid, torch.zeros(steps, 4), analytic_first_step=False, solver="euler",
                          gamma_max=0.0).x
    start = sample_adasde(d, x0.float(), grid, init_multistep_raw(grid, "euler"), analytic_first_step=False,
                          solver="multistep", gamma_max=0.0).x
    assert torch.allclose(start, euler, rtol=1e-5, atol=1e-5 * float(euler.abs().max()))
    assert all(abs(w1) < 1e-5 and w2 == 0.0 for w1, w2, _ in multistep_effective_weights(grid, init_multistep_raw(grid, "euler")))


def test_untrained_multistep_file_reproduces_diffusers_dpm_solver_2m_in_a_pipeline(tmp_path: Path) -> None:
    ab = sd_alphas_cumprod().double()
    ts = sorted(torch.randperm(900)[:4].add(60).tolist(), reverse=True) + [int(torch.randint(1, 50, ()))]
    positive = ((1 - ab[ts]) / ab[ts]).sqrt()  # sigmas of integer timesteps: diffusers' DPM-Solver rounds to those
    path = _multistep_file(tmp_path / "m.safetensors", positive, torch.zeros(len(ts), 4))
    tb = "gmm2d-8"
    z = torch.randn(32, *GMMPipeline(GMMEpsModel(tb), EulerDiscreteScheduler(**SD_SCHEDULE)).testbed.data_shape,
                    dtype=torch.float64)
    ours = GMMPipeline(GMMEpsModel(tb), EulerDiscreteScheduler(**SD_SCHEDULE))
    ours.scheduler = AdaSDEScheduler.from_file(path, pipe=ours)
    out = ours(batch_size=32, num_inference_steps=len(ts), latents=z)
    assert out.nfe == len(ts) and ours.scheduler.order == 1
    dpm = DPMSolverMultistepScheduler(**SD_SCHEDULE, solver_order=2, final_sigmas_type="zero")
    original = dpm.set_timesteps

    def set_timesteps(num_inference_steps=None, device=None, **_):
        original(num_inference_steps=len(ts), device=device)
        dpm.sigmas = torch.cat([positive, torch.zeros(1, dtype=torch.float64)]).float()
        dpm.timesteps = torch.tensor(ts)

    dpm.set_timesteps = set_timesteps
    # the VE start sigma_max z is the VP latent sigma_max / sqrt(1 + sigma_max^2) z (DPM-Solver starts at unit scale)
    s0 = float(positive[0])
    ref = GMMPipeline(GMMEpsModel(tb), dpm)(batch_size=32, num_inference_steps=len(ts), latents=z * s0 / math.sqrt(1 + s0**2))
    assert torch.allclose(out.samples, ref.samples, atol=1e-4 * float(ref.samples.abs().max()))
    # a second call starts afresh (set_timesteps drops the previous call's denoised estimates)
    again = ours(batch_size=32, num_inference_steps=len(ts), latents=z)
    assert torch.equal(again.samples, out.samples)


def _multistep_file(path: Path, positive: torch.Tensor, raw: torch.Tensor) -> Path:
    """A learned-ends multistep file on the grid ``positive`` then 0."""
    ends = end_logits_for(float(positive[0]), float(positive[-1]), SMIN, SMAX)
    interior = logits_for_grid(positive)
    grid = grid_with_ends(interior, ends, SMIN, SMAX)
    record = {"top_logit": float(ends[0]), "bottom_logit": float(ends[1]), "sigma_lo": SMIN, "sigma_hi": SMAX}
    meta = CoefficientMetadata(model="testbed:gmm64-16", nfe=len(positive), solver="multistep", analytic_first_step=False,
                               schedule="learned", sigma_min=float(grid[-2]), sigma_max=float(grid[0]), gamma_max=0.0,
                               grid_logits=[float(v) for v in interior], grid_ends=record)
    save_coefficients(path, raw, grid, meta)
    return path


def test_learned_weights_are_bounded_and_follow_a_constant_denoiser() -> None:
    raw = torch.tensor([0.0, 1e6, -1e6, 1e6], dtype=torch.float64)
    off1, off2, kappa = multistep_weights(raw)
    assert float(off1) == pytest.approx(MULTISTEP_WEIGHT_BOUND) and float(off2) == pytest.approx(-MULTISTEP_WEIGHT_BOUND)
    assert float(kappa) == pytest.approx(1.5)
    # the weights of every estimate sum to 1: a denoiser that always says c is followed to c exactly
    c = torch.randn(1, 3)
    grid = torch.cat([make_sigmas(4, 0.1, 10.0, "loglinear"), torch.zeros(1, dtype=torch.float64)])
    raw = 3.0 * torch.randn(5, 4)
    out = sample_adasde(lambda x, s: c.expand_as(x), torch.randn(8, 3) * 10, grid, raw, analytic_first_step=False,
                        solver="multistep", gamma_max=0.0).x
    assert torch.allclose(out, c.expand(8, 3), atol=1e-5)


def test_multistep_files_are_validated(tmp_path: Path) -> None:
    positive = make_sigmas(4, 0.2, 10.0, "loglinear")
    raw = torch.randn(5, 4)
    path = _multistep_file(tmp_path / "ok.safetensors", positive, raw)
    cf = load_coefficients(path)
    assert cf.meta.solver == "multistep" and torch.equal(cf.raw, raw) and cf.meta.steps == 5
    with pytest.raises(CoefficientFileError, match="analytic_first_step.*multistep"):
        CoefficientMetadata(model="m", nfe=5, solver="multistep", analytic_first_step=True, sigma_min=0.5, sigma_max=5.0)
    meta = CoefficientMetadata(model="m", nfe=4, solver="multistep", analytic_first_step=False, sigma_min=0.5, sigma_max=5.0)
    assert meta.steps == 4  # one call per step, no end to 0 needed
    with pytest.raises(ValueError, match="no analytic first step"):
        DistillConfig(nfe=5, solver="multistep")
    # a grid whose 2M weight the bounded offset cannot cancel has no Euler start (said, not clipped)
    uneven = torch.tensor([10.0, 9.9, 0.5, 0.1], dtype=torch.float64)
    with pytest.raises(ValueError, match="beyond the multistep form's reach"):
        init_multistep_raw(uneven, "euler")


def test_distilling_multistep_weights_and_grid_beats_the_euler_form_on_the_final_sample(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    tb = get_testbed("gmm2d-8")
    denoiser = lambda x, s: tb.denoiser.denoise(x, s)  # noqa: E731
    noise = lambda n, g: torch.randn((n, *tb.data_shape), generator=g)  # noqa: E731
    seed = int(torch.randint(0, 2**31, ()))
    cfg = DistillConfig(nfe=4, solver="multistep", analytic_first_step=False, gamma_max=0.0, iterations=30,
                        batch_size=64, teacher_factor=4, sigma_min=0.1, sigma_max=SMAX, schedule="loglinear",
                        learn_grid=True, learn_ends=True, grid_lr=0.1, step_weight=0.0, seed=seed, teacher_pool=1)
    out = tmp_path / "m.safetensors"
    res = distill(denoiser, noise, cfg, model="testbed:gmm2d-8", output=out, progress=False,
                  model_sigma_range=(SMIN, SMAX))
    cf = load_coefficients(out)
    assert cf.meta.solver == "multistep" and float(cf.sigmas[-1]) == 0.0 and bool(cf.raw[1:, 1:].abs().gt(1e-3).any())
    assert sum(res.losses[-5:]) / 5 < 0.8 * res.initial_loss
    # on fresh noise: closer to the reference than the untrained 2M on its starting grid
    z = noise(512, torch.Generator().manual_seed(seed + 1))
    ref = reference_teacher(denoiser, z, reference_grid(64, SMIN, SMAX).float())
    start = torch.cat([make_sigmas(cfg.steps - 1, 0.1, SMAX, "loglinear"), torch.zeros(1, dtype=torch.float64)])

    def err(grid: torch.Tensor, raw: torch.Tensor) -> float:
        x = final_state(denoiser, z * float(grid[0]), grid.float(), raw, cfg, torch.Generator())
        return float((x - ref).pow(2).mean().sqrt())

    assert err(cf.sigmas, cf.raw) < 0.8 * err(start, torch.zeros(cfg.steps, 4))
    # the same run with the grid by central differences still trains the weights (by autograd)
    fd = distill(denoiser, noise, attrs.evolve(cfg, grid_fd_step=0.05, iterations=4), model="t", progress=False,
                 model_sigma_range=(SMIN, SMAX))
    assert bool(fd.coefficients.raw[1:, 1:].abs().gt(1e-3).any())


def test_cli_distils_and_inspects_a_multistep_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m.safetensors"
    with pytest.raises(SystemExit, match="--solver multistep .*--no-afs"):
        cli_main(["distill", "--testbed", "gmm2d-8", "--nfe", "3", "--solver", "multistep", "--out", str(out)])
    assert cli_main(["distill", "--testbed", "gmm2d-8", "--nfe", "3", "--solver", "multistep", "--no-afs",
                     "--gamma-max", "0", "--multistep-start", "euler", "--iterations", "3", "--batch", "16",
                     "--teacher-factor", "2", "--threads", "1", "--out", str(out)]) == 0
    cf = load_coefficients(out)
    assert cf.meta.solver == "multistep" and cf.meta.training["multistep_start"] == "euler"
    capsys.readouterr()
    assert cli_main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.count("w(D_n-D_n-1)=") == 3 and "kappa=" in text
    np.testing.assert_allclose([w for w, _, _ in multistep_effective_weights(cf.sigmas, cf.raw)][0], 0.0)
