"""The analytic Gaussian-mixture testbed: exact denoiser, references, metrics, pipeline, bench."""

from __future__ import annotations

import math

import pytest
import torch

from sadakit.testbeds import metrics as M
from sadakit.testbeds.configs import CONFIGS, ErrorSpec, TestbedConfig, get_testbed, register_config
from sadakit.testbeds.errors import FieldErrorDenoiser
from sadakit.testbeds.gmm import GaussianMixture
from sadakit.testbeds.pipeline import GMMEpsModel, GMMFlowModel, GMMPipeline, GMMTrigVModel
from sadakit.testbeds.reference import solve_flow_ode, solve_from_noise
from sadakit.testbeds.solvers import SOLVERS, make_pipeline


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are tiny: one thread avoids OpenMP overhead on a loaded 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _gen(seed: int | None = None) -> torch.Generator:
    return torch.Generator().manual_seed(int(torch.randint(0, 2**31, ()).item()) if seed is None else seed)


def _small_mixture(d: int, k: int, g: torch.Generator) -> GaussianMixture:
    means = torch.randn(k, d, generator=g, dtype=torch.float64) * 1.5
    var = 0.05 + 0.3 * torch.rand(k, d, generator=g, dtype=torch.float64)
    return GaussianMixture(0.5 + torch.rand(k, generator=g, dtype=torch.float64), means, var)


# ----------------------------------------------------------------------------- exact denoiser
@pytest.mark.parametrize("d,sigma", [(2, 0.3), (2, 1.5), (3, 0.7), (3, 4.0)])
def test_denoiser_matches_monte_carlo_posterior_mean(d, sigma):
    """Self-normalised importance sampling of E[x0|x] with x0 from the prior, weights
    N(x; x0, sigma^2): the closed form lies within 4.5 standard errors in every coordinate."""
    g = _gen()
    mix = _small_mixture(d, 4, g)
    x = mix.sample(3, generator=g) + sigma * torch.randn(3, d, generator=g, dtype=torch.float64)
    x0 = mix.sample(200_000, generator=g)
    exact = mix.denoise(x, sigma)
    for i in range(x.shape[0]):
        logw = -0.5 * ((x[i] - x0) ** 2).sum(1) / sigma**2
        w = torch.softmax(logw, 0)
        est = (w[:, None] * x0).sum(0)
        se = ((w[:, None] ** 2) * (x0 - est) ** 2).sum(0).sqrt()
        ess = 1.0 / (w**2).sum()
        assert ess > 200, "test draws too few effective samples to judge"
        assert torch.all((exact[i] - est).abs() <= 4.5 * se + 1e-9), (exact[i], est, se)


def test_denoiser_limits_and_per_sample_sigma():
    g = _gen()
    mix = _small_mixture(5, 3, g)
    x = torch.randn(6, 5, generator=g, dtype=torch.float64) * 3
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        xd = x.to(dtype)
        assert torch.allclose(mix.denoise(xd, 0.0), xd, atol=tol)
        assert torch.allclose(mix.denoise(xd, 1e-7), xd, atol=1e-5)
        mean = mix.mean().to(dtype).expand_as(xd)
        assert torch.allclose(mix.denoise(xd, math.inf), mean, atol=tol)
        assert torch.allclose(mix.denoise(xd * 1e12, 1e12), mix.denoise(xd, math.inf), atol=1e-4)
        assert torch.isfinite(mix.denoise(xd * 1e30, 1e30)).all()
    sig = torch.tensor([0.0, 0.1, 1.0, 10.0, 1e6, math.inf], dtype=torch.float64)
    batched = mix.denoise(x, sig)
    for i, s in enumerate(sig.tolist()):
        assert torch.allclose(batched[i], mix.denoise(x[i : i + 1], s)[0], atol=1e-12, rtol=0)


def test_float32_agrees_with_float64_on_latent_config():
    tb = get_testbed("latent-4x16x16")
    g = _gen()
    x0 = tb.mixture.sample(16, generator=g)
    for sigma in (0.02, 0.3, 2.0, 14.6):
        x = x0 + sigma * torch.randn(x0.shape, generator=g, dtype=torch.float64)
        ref = tb.mixture.denoise(x, sigma)
        got = tb.mixture.denoise(x.float(), sigma).double()
        rel = (got - ref).norm() / ref.norm()
        assert rel < 2e-5, (sigma, rel)


def test_shared_level_fast_path_matches_direct_computation():
    """float64 batches at one noise level use matrix products; the chunked (B, K, d) path is
    the check."""
    tb = get_testbed("latent-4x16x16")
    g = _gen()
    x = 1.5 * torch.randn(32, 1024, generator=g, dtype=torch.float64)
    for tau in (0.0, 1e-3, 0.3, 0.9, 1.0):
        fast = tb.mixture.denoise_flow(x, tau, 1 - tau)
        full = torch.full((32,), tau, dtype=torch.float64)
        _, direct = tb.mixture._posterior_direct(x, 1 - full, full)
        assert torch.allclose(fast, direct, atol=1e-10, rtol=0), tau


def test_log_prob_matches_scipy_and_flow_chart_matches_ve_chart():
    from scipy.stats import multivariate_normal

    g = _gen()
    mix = _small_mixture(3, 4, g)
    x = torch.randn(7, 3, generator=g, dtype=torch.float64)
    dens = sum(
        float(w) * multivariate_normal(mean=m.numpy(), cov=torch.diag(v).numpy()).pdf(x.numpy())
        for w, m, v in zip(mix.weights, mix.means, mix.variances)
    )
    assert torch.allclose(mix.log_prob(x), torch.from_numpy(dens).log(), rtol=1e-10, atol=1e-12)
    sigma = 0.8
    tau = sigma / (1 + sigma)
    assert torch.allclose(mix.denoise(x, sigma), mix.denoise_flow(x / (1 + sigma), tau), atol=1e-12)


def test_sampling_moments():
    g = _gen()
    mix = _small_mixture(4, 3, g)
    s = mix.sample(40_000, generator=g)
    cov_total = (mix.weights[:, None] * (mix.variances + mix.means**2)).sum(0) - mix.mean() ** 2
    se = (cov_total / s.shape[0]).sqrt()
    assert torch.all((s.mean(0) - mix.mean()).abs() < 5 * se)


def test_field_error_has_the_requested_size_and_vanishes_at_zero_noise():
    mix = get_testbed("gmm64-16").mixture
    err = FieldErrorDenoiser(mix, magnitude=0.1, seed=3)
    g = _gen()
    x = torch.randn(256, 64, generator=g, dtype=torch.float64)
    e = err.denoise_flow(x, 1.0, 0.0) - mix.denoise_flow(x, 1.0, 0.0)
    rel = e.pow(2).mean().sqrt() / math.sqrt(mix.second_moment())
    assert 0.09 < rel < 0.11
    assert torch.allclose(err.denoise(x, 0.0), x, atol=1e-12)
    assert get_testbed("gmm64-16-err").denoiser is not get_testbed("gmm64-16-err").mixture


def test_configs_build_and_validate():
    for name in CONFIGS:
        tb = get_testbed(name)
        assert tb.mixture.data_shape == tb.config.data_shape
    with pytest.raises(ValueError, match="already exists"):
        register_config(CONFIGS["gmm2d-8"])
    with pytest.raises(ValueError, match="data_shape"):
        TestbedConfig(name="bad", data_shape=(0,), n_components=2, seed=0)
    with pytest.raises(ValueError):
        ErrorSpec(kind="other", magnitude=0.1)


# ----------------------------------------------------------------------------- reference
def test_reference_matches_closed_form_for_one_gaussian():
    """For a single Gaussian N(mu, v) the ODE solution is x(sigma) - mu ∝ sqrt(v + sigma^2)."""
    g = _gen()
    d = 6
    mu = torch.randn(1, d, generator=g, dtype=torch.float64)
    var = 0.1 + torch.rand(1, d, generator=g, dtype=torch.float64)
    mix = GaussianMixture([1.0], mu, var)
    sigma_s = 14.6
    x_s = mu + sigma_s * torch.randn(4, d, generator=g, dtype=torch.float64)
    tau_s = sigma_s / (1 + sigma_s)
    got = solve_flow_ode(mix, x_s / (1 + sigma_s), tau_s)
    exact = mu + (x_s - mu) * (var / (var + sigma_s**2)).sqrt()
    assert torch.allclose(got, exact, atol=1e-8, rtol=0)
    # from pure noise (tau = 1): x(sigma) ~ sigma z, so x(0) = mu + sqrt(v) z
    z = torch.randn(4, d, generator=g, dtype=torch.float64)
    assert torch.allclose(solve_flow_ode(mix, z, 1.0), mu + var.sqrt() * z, atol=1e-8, rtol=0)


def test_reference_own_error_is_negligible():
    tb = get_testbed("gmm64-16")
    z = torch.randn(8, 64, generator=_gen(), dtype=torch.float64)
    loose = solve_from_noise(tb.denoiser, z, 1.0, 1.0, rtol=1e-8, atol=1e-8)
    tight = solve_from_noise(tb.denoiser, z, 1.0, 1.0, rtol=1e-10, atol=1e-10)
    assert ((loose - tight).norm() / tight.norm()) < 1e-6


# ----------------------------------------------------------------------------- metrics
def test_metrics_sanity():
    mix = get_testbed("gmm64-16").mixture
    g = _gen()
    a, b = mix.sample(400, generator=g), mix.sample(400, generator=g)
    same = M.sliced_wasserstein(a, b, generator=g)
    shifted = M.sliced_wasserstein(a, b + 0.5, generator=g)
    assert shifted > 3 * same
    assert abs(M.mmd_rbf(a, b)) < 0.2 * M.mmd_rbf(a, b + 0.5)
    est = M.distribution_distance(mix, a, repeats=4)
    floor = M.distance_floor(mix, 400, repeats=4)
    assert abs(est.mean - floor.mean) < 3 * (est.ci95 + floor.ci95) + 1e-3
    assert M.distribution_distance(mix, a * 1.5, repeats=4).mean > est.mean + est.ci95
    assert M.rmse(a, a) == 0.0 and M.mode_agreement(mix, a, a) == 1.0
    assert M.per_sample_rmse(a, a + 0.25).allclose(torch.full((400,), 0.25, dtype=torch.float64))
    ll_true = M.mean_log_likelihood(mix, a)
    assert M.mean_log_likelihood(mix, a + 0.5) < ll_true


# ----------------------------------------------------------------------------- pipeline
@pytest.mark.parametrize("model_cls,t", [(GMMEpsModel, 500.0), (GMMEpsModel, 13.37), (GMMFlowModel, 0.6), (GMMTrigVModel, 0.3)])
def test_models_speak_their_parameterisation(model_cls, t):
    tb = get_testbed("gmm64-16")
    model = model_cls(tb)
    g = _gen()
    x = torch.randn(5, 64, generator=g, dtype=torch.float64)
    out = model(x, torch.tensor(t, dtype=torch.float64), return_dict=True).sample
    x_flow, tau, a = model.flow_state(x, t)
    x0 = tb.denoiser.denoise_flow(x_flow, tau, a)
    if model_cls is GMMEpsModel:
        sigma = (tau / a)[0]
        x_ve = x * math.sqrt(1 + sigma**2)
        assert torch.allclose(out, (x_ve - x0) / sigma, atol=1e-10)  # eps = (x_ve - D) / sigma
    elif model_cls is GMMFlowModel:
        assert torch.allclose(x - t * out, x0, atol=1e-10)  # x0 = x_t - t u
    else:
        alpha, s = math.cos(math.pi * t / 2), math.sin(math.pi * t / 2)
        assert torch.allclose(alpha * x - s * out, x0, atol=1e-10)  # x0 = alpha x - s v
    assert model.nfe == 1


def test_fractional_timesteps_follow_the_schedulers_sigmas():
    """Karras sigmas give fractional timesteps; the model must see the scheduler's sigma."""
    pipe = make_pipeline("gmm2d-8", "euler-karras")
    pipe.scheduler.set_timesteps(9)
    for t, sigma in zip(pipe.scheduler.timesteps, pipe.scheduler.sigmas[:-1]):
        _, tau, a = pipe.denoiser.flow_state(torch.zeros(1, 2), t)
        assert abs(float(tau / a) - float(sigma)) < 2e-4 * float(sigma)


@pytest.mark.parametrize("solver", ["ddim", "euler", "dpm++2m", "unipc", "flow-euler", "heun", "ipndm", "deis"])
def test_pipeline_converges_to_the_reference(solver):
    tb = get_testbed("gmm64-16")
    z = torch.randn(24, 64, generator=_gen(), dtype=torch.float64)
    pipe = make_pipeline(tb, solver)
    errs, ref = [], None
    for steps in (3, 12, 48):
        out = pipe(num_inference_steps=steps, latents=z)
        assert out.calls == out.nfe == (2 * steps - 1 if solver == "heun" else steps)
        if ref is None:
            ref = solve_from_noise(tb.denoiser, z, out.start_tau, out.start_scale, sigma_end=out.final_sigma)
        errs.append(float(M.per_sample_rmse(out.samples, ref).median()))
    assert errs[2] < errs[1] < errs[0], errs
    assert errs[2] < 0.05, errs


def test_pipeline_same_noise_same_start_and_resets_hooks():
    from diffusers.hooks import HookRegistry, ModelHook

    class Stateful(ModelHook):
        _is_stateful = True

        def __init__(self):
            super().__init__()
            self.resets = 0

        def reset_state(self, module):
            self.resets += 1
            return module

    pipe = make_pipeline("gmm2d-8", "euler")
    hook = Stateful()
    HookRegistry.check_if_exists_or_initialize(pipe.denoiser).register_hook(hook, "probe")
    z = torch.randn(4, 2, generator=_gen(), dtype=torch.float64)
    a = pipe(num_inference_steps=4, latents=z)
    b = pipe(num_inference_steps=4, latents=z)
    assert torch.equal(a.samples, b.samples) and a.start_scale == b.start_scale
    assert hook.resets == 2
    assert isinstance(GMMPipeline(pipe.denoiser, pipe.scheduler).testbed.name, str)


# ----------------------------------------------------------------------------- benchmark
def test_small_benchmark_runs_and_orders():
    from sadakit.testbeds import bench

    rows, summaries = bench.run_benchmark(
        configs=("gmm2d-8",), nfes=(3, 20), methods=["euler", "ipndm", "heun"], n_samples=64, sw_repeats=3
    )
    table = bench.markdown_tables(rows, summaries)
    assert "| ipndm | 20 |" in table and "gmm2d-8" in table
    err = {(r.method, r.nfe): r.values["rmse_median"] for r in rows}
    assert err[("euler", 20)] < err[("euler", 3)]
    assert err[("heun", 19)] < err[("heun", 3)]
    # The full table's ordering: on SD's schedule every VP solver's last step is a first-order
    # jump from sigma ~ 0.2 to 0; iPNDM's trigonometric grid puts more steps at low noise.
    assert err[("ipndm", 20)] < 0.5 * err[("euler", 20)]
    assert {r.nfe for r in rows if r.method == "heun"} == {3, 19}
    assert all(set(r.as_json()) >= {"rmse", "sw", "loglik", "nfe"} for r in rows)
    assert set(SOLVERS) <= set(bench.METHODS)
