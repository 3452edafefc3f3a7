"""The learned AdaSDE sigma grid: parameterisation, files that carry it, the scheduler, distillation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sadakit.adasde import (
    AdaSDEScheduler,
    CoefficientFileError,
    CoefficientMetadata,
    load_coefficients,
    save_coefficients,
)
from sadakit.adasde.coefficients import METADATA_KEY
from sadakit.adasde.distill import DistillConfig, distill
from sadakit.adasde.grid import grid_from_logits, logits_for_grid
from sadakit.bundled.shapes_adasde import SHAPES_ADASDE_DIR
from sadakit.core.adasde import init_raw_coefficients, make_sigmas, sample_adasde, sample_midpoint, squash
from sadakit.testbeds.configs import get_testbed
from sadakit.testbeds.pipeline import SD_SCHEDULE

SMIN, SMAX = 0.0292, 14.6


pytestmark = pytest.mark.usefixtures("flush_denormals")  # the testbed's posteriors underflow at small sigma


def test_grid_is_monotone_and_hits_its_ends() -> None:
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    for steps in (1, 2, 3, 6, 11):
        logits = 4.0 * torch.randn(steps, generator=gen, dtype=torch.float64)
        grid = grid_from_logits(logits, SMAX, SMIN)
        assert grid.shape == (steps + 1,)
        assert float(grid[0]) == SMAX and float(grid[-1]) == SMIN
        assert bool((grid[:-1] > grid[1:]).all())
        # the inverse gives the same grid back (softmax ignores a constant)
        assert torch.allclose(grid_from_logits(logits_for_grid(grid), SMAX, SMIN), grid, rtol=1e-12)
    # equal logits are the log-linear grid
    assert torch.allclose(grid_from_logits(torch.zeros(5, dtype=torch.float64), SMAX, SMIN),
                          make_sigmas(5, SMIN, SMAX, "loglinear"), rtol=1e-12)


def _learned_file(path: Path, steps: int = 5) -> torch.Tensor:
    """A churn-free Euler file (NFE = steps - 1) with a random learned grid; returns the grid."""
    logits = torch.randn(steps, dtype=torch.float64)
    meta = CoefficientMetadata(model="testbed:gmm2d-8", nfe=steps - 1, solver="euler", schedule="learned",
                               sigma_min=SMIN, sigma_max=SMAX, gamma_max=0.0, grid_logits=[float(v) for v in logits])
    grid = meta.learned_grid
    save_coefficients(path, init_raw_coefficients(steps, 0.0, 0.0), grid, meta)
    return grid


def test_learned_grid_round_trips_and_the_scheduler_uses_it(tmp_path: Path) -> None:
    path = tmp_path / "lgrid.safetensors"
    grid = _learned_file(path)
    cf = load_coefficients(path)
    assert cf.meta.schedule == "learned"
    assert torch.equal(cf.sigmas, grid)
    sched = AdaSDEScheduler.from_file(path, SD_SCHEDULE)
    sched.set_timesteps(cf.meta.nfe)
    # Euler with the analytic first step calls the model at every interior node, in order
    assert torch.allclose(sched.sigmas[:-1].double(), grid[1:-1], rtol=1e-6)
    assert float(sched.sigmas[-1]) == pytest.approx(SMIN)
    expected_t = torch.tensor([sched.chart.timestep(float(s)) for s in grid[1:-1]])
    assert torch.allclose(sched.timesteps, expected_t.to(sched.timesteps.dtype))
    # and through the scheduler config too
    again = AdaSDEScheduler.from_config(sched.config)
    assert again.meta.grid_logits == cf.meta.grid_logits


def _rewrite_metadata(src: Path, dst: Path, edit) -> None:
    """Copy a coefficient file with its metadata JSON edited (tensors unchanged, no checks)."""
    cf = load_coefficients(src)
    data = json.loads(cf.meta.to_json())
    edit(data)
    save_file({"raw": cf.raw.contiguous(), "sigmas": cf.sigmas.contiguous()}, str(dst),
              metadata={METADATA_KEY: json.dumps(data), "format": "pt"})


@pytest.mark.parametrize(
    "edit, names",
    [
        (lambda d: d["grid_logits"].__setitem__(2, d["grid_logits"][2] + 0.5), "grid_logits"),
        (lambda d: d["grid_logits"].pop(), "metadata field 'grid_logits'"),
        (lambda d: d["grid_logits"].__setitem__(0, "x"), "metadata field 'grid_logits'"),
        (lambda d: d["grid_logits"].__setitem__(1, 1e9), "metadata field 'grid_logits'"),
        (lambda d: d.__setitem__("grid_logits", {"a": 1}), "metadata field 'grid_logits'"),
    ],
)
def test_corrupted_grid_field_is_refused_by_name(tmp_path: Path, edit, names: str) -> None:
    good = tmp_path / "good.safetensors"
    _learned_file(good)
    bad = tmp_path / "bad.safetensors"
    _rewrite_metadata(good, bad, edit)
    with pytest.raises(CoefficientFileError) as err:
        load_coefficients(bad)
    assert names in str(err.value) and str(bad) in str(err.value)
    with pytest.raises(CoefficientFileError):
        AdaSDEScheduler.from_file(bad, SD_SCHEDULE)


def test_a_learned_grid_must_match_the_grid_tensor() -> None:
    meta = CoefficientMetadata(model="m", nfe=4, solver="euler", schedule="learned", sigma_min=SMIN, sigma_max=SMAX,
                               gamma_max=0.0, grid_logits=[0.0] * 5)
    with pytest.raises(CoefficientFileError, match="grid_logits"):
        save_coefficients("/nonexistent/never-written.safetensors", init_raw_coefficients(5, 0.0, 0.0),
                          make_sigmas(5, SMIN, SMAX, "karras"), meta)


def test_old_shipped_file_still_loads() -> None:
    path = SHAPES_ADASDE_DIR / "euler-nfe5.safetensors"
    cf = load_coefficients(path)
    assert cf.meta.grid_logits is None and cf.meta.learned_grid is None
    assert cf.meta.schedule == "karras"
    sched = AdaSDEScheduler.from_file(path, SD_SCHEDULE)
    sched.set_timesteps(cf.meta.nfe)
    # its calls sit at its stored grid's interior nodes, raised by each step's learned churn
    gammas = torch.tensor([float(c.gamma) for c in squash(cf.raw, cf.meta.gamma_max)], dtype=torch.float64)
    gammas[1] = 0.0  # the core never churns before the first model call (Euler after the analytic first step)
    assert torch.allclose(sched.sigmas[:-1].double(), (1.0 + gammas[1:]) * cf.sigmas[1:-1], rtol=1e-5)


def test_grid_learning_lowers_the_loss_and_the_final_error_on_the_testbed(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    tb = get_testbed("gmm2d-8")

    def denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return tb.denoiser.denoise(x, sigma)

    def noise(batch: int, g: torch.Generator) -> torch.Tensor:
        return torch.randn((batch, *tb.data_shape), generator=g)

    seed = int(torch.randint(0, 2**31, ()))
    cfg = DistillConfig(nfe=3, solver="euler", gamma_max=0.0, iterations=25, batch_size=64, teacher_factor=4,
                        sigma_min=SMIN, sigma_max=SMAX, schedule="loglinear", learn_grid=True, grid_lr=0.1, seed=seed,
                        step_weight=0.0)
    out = tmp_path / "c.safetensors"
    res = distill(denoiser, noise, cfg, model="testbed:gmm2d-8", output=out, progress=False)
    cf = load_coefficients(out)
    assert cf.meta.grid_logits is not None and cf.meta.schedule == "learned"
    start_grid = make_sigmas(cfg.steps, SMIN, SMAX, "loglinear")
    assert not torch.allclose(cf.sigmas, start_grid, rtol=1e-3)  # the grid moved
    assert sum(res.losses[-5:]) / 5 < 0.8 * res.initial_loss
    # on fresh noise the learned file ends closer to the exact ODE solution than its starting point
    x = SMAX * torch.randn((512, *tb.data_shape), generator=torch.Generator().manual_seed(seed + 1))
    ref = sample_midpoint(denoiser, x, make_sigmas(64, SMIN, SMAX, "karras"))
    learned = sample_adasde(denoiser, x, cf.sigmas, cf.raw, solver="euler", gamma_max=0.0).x
    untrained = sample_adasde(denoiser, x, start_grid, init_raw_coefficients(cfg.steps, 0.0, 0.0), solver="euler",
                              gamma_max=0.0).x
    err = lambda y: float((y - ref).pow(2).mean().sqrt())  # noqa: E731
    assert err(learned) < 0.8 * err(untrained), (err(learned), err(untrained))
    assert math.isfinite(err(learned))


def test_a_learned_grid_run_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    tb = get_testbed("gmm2d-8")

    def denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return tb.denoiser.denoise(x, sigma)

    def noise(batch: int, g: torch.Generator) -> torch.Tensor:
        return torch.randn((batch, *tb.data_shape), generator=g)

    seed = int(torch.randint(0, 2**31, ()))
    cfg = DistillConfig(nfe=3, solver="adasde", gamma_max=0.0, iterations=6, batch_size=32, teacher_factor=2,
                        sigma_min=SMIN, sigma_max=SMAX, learn_grid=True, step_weight=0.0, checkpoint_every=3, seed=seed)
    straight = distill(denoiser, noise, cfg, model="t", progress=False).coefficients
    out = tmp_path / "c.safetensors"
    calls = {"n": 0}

    def crashing(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] > 11 * 4 + 5:  # 11 calls per iteration (and for the held-out loss): dies in iteration 4
            raise KeyboardInterrupt
        return denoiser(x, sigma)

    with pytest.raises(KeyboardInterrupt):
        distill(crashing, noise, cfg, model="t", output=out, progress=False)
    resumed = distill(denoiser, noise, cfg, model="t", output=out, progress=False)
    assert resumed.resumed_from == 3
    assert torch.allclose(resumed.coefficients.sigmas, straight.sigmas, rtol=1e-5)
    assert torch.allclose(resumed.coefficients.raw, straight.raw, atol=1e-5)
