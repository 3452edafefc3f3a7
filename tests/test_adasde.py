"""AdaSDE: step math, reproducibility, NFE, coefficient files, scheduler in pipelines, distillation."""

from __future__ import annotations

import json
import math

import attrs
import pytest
import torch

from sadakit.adasde import (
    AdaSDEScheduler,
    CoefficientMetadata,
    CoefficientMismatchError,
    check_compatible,
    load_coefficients,
    save_coefficients,
)
from sadakit.adasde.distill import DistillConfig, distill, shard_sizes
from sadakit.core.adasde import (
    adasde_step,
    count_nfe,
    init_raw_coefficients,
    make_sigmas,
    plugin_step,
    refine_sigmas,
    sample_adasde,
    squash,
    steps_for_nfe,
)


@pytest.fixture(autouse=True)
def _fast_cpu_settings():
    # Gaussian-mixture posteriors underflow to denormals at small sigma (30x slower on CPU), and
    # these tiny tensors run ~100x slower with 2 threads on a loaded 2-core machine than with 1.
    threads = torch.get_num_threads()
    torch.set_flush_denormal(True)
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    torch.set_flush_denormal(False)


def gaussian_mixture(means: list[list[float]], std: float, dtype=torch.float32):
    """Exact denoiser ``E[x0 | x0 + sigma z = x]`` of an isotropic Gaussian mixture (equal weights)."""
    mu = torch.tensor(means, dtype=dtype)

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        m = mu.to(x.dtype)
        var = std**2 + sigma.to(x.dtype) ** 2
        d2 = ((x[:, None, :] - m[None]) ** 2).sum(-1)
        w = torch.softmax(-d2 / (2 * var), dim=1)
        comp = m[None] + (std**2 / var) * (x[:, None, :] - m[None])
        return (w[..., None] * comp).sum(1)

    return denoise


RING = [[2 * math.cos(2 * math.pi * i / 6), 2 * math.sin(2 * math.pi * i / 6)] for i in range(6)]


def unit_gaussian_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Data N(0, I): ``D(x, sigma) = x / (1 + sigma^2)``."""
    return x / (1.0 + sigma**2)


# --------------------------------------------------------------------------------------
# step math
# --------------------------------------------------------------------------------------


def reference_step_f64(D, x, t_cur, t_next, gamma, r, a, c, z, afs):
    """docs/design.md section 3 written out literally in float64 (independent of the plan code)."""
    th = (1 + gamma) * t_cur
    xh = x + math.sqrt(th**2 - t_cur**2) * z
    if afs:
        d = xh / math.sqrt(1 + th**2)
    else:
        d = (xh - D(xh, torch.tensor(th, dtype=torch.float64))) / th
    tm = t_next**r * th ** (1 - r)
    xm = xh + (tm - th) * d
    dm = (xm - D(xm, torch.tensor(a * tm, dtype=torch.float64))) / tm
    return xh + c * (t_next - th) * dm


@pytest.mark.parametrize("afs", [False, True])
def test_step_matches_float64_reference(afs):
    D = gaussian_mixture(RING, 0.3)
    D64 = gaussian_mixture(RING, 0.3, torch.float64)
    raw = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.7, -0.4, 1.1, -0.8]])
    co = squash(raw, gamma_max=0.4)[1]
    gamma, r, a, c = (float(v) for v in (co.gamma, co.r, co.a, co.c))
    assert 2e-4 <= gamma <= 0.4 and 0 < r < 1 and 0.8 <= a <= 1.2 and 0.95 <= c <= 1.05
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(3)) * 5
    out = adasde_step(D, x, 5.0, 1.5, co, generator=torch.Generator().manual_seed(7), analytic_first_step=afs)
    z = torch.randn(64, 2, generator=torch.Generator().manual_seed(7)).double()
    ref = reference_step_f64(D64, x.double(), 5.0, 1.5, gamma, r, a, c, z, afs)
    torch.testing.assert_close(out.double(), ref, rtol=2e-5, atol=2e-5)


def test_squash_ranges_and_first_gamma_zero():
    raw = torch.randn(5, 4, generator=torch.Generator().manual_seed(0)) * 10
    raw[1, 0], raw[2, 0] = -100.0, 100.0  # saturated ends
    coeffs = squash(raw, gamma_max=0.5)
    assert float(coeffs[0].gamma) == 0.0  # gamma_0 = 0: the first state is already pure noise
    for co in coeffs[1:]:
        assert 2e-4 * (1 - 1e-6) <= float(co.gamma) <= 0.5 * (1 + 1e-6)  # float32 ends
    assert all(float(co.gamma) == 0.0 for co in squash(raw, gamma_max=0.0))
    with pytest.raises(ValueError, match="gamma_max"):
        squash(raw, gamma_max=-1.0)
    with pytest.raises(ValueError, match="shape"):
        squash(torch.zeros(3, 2), 0.3)


def test_half_precision_is_computed_in_float32_and_cast_back():
    x = torch.randn(8, 2) * 10
    co = squash(init_raw_coefficients(2), 0.3)[1]
    seen = []

    def D(x, s):
        seen.append(x.dtype)
        return unit_gaussian_denoiser(x.float(), s).to(x.dtype)

    out = adasde_step(D, x.to(torch.bfloat16), 10.0, 2.0, co, torch.Generator().manual_seed(0))
    assert out.dtype == torch.bfloat16 and seen == [torch.bfloat16, torch.bfloat16]
    ref = adasde_step(unit_gaussian_denoiser, x.to(torch.bfloat16).float(), 10.0, 2.0, co, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=5e-2)


def test_plugin_steps_reduce_to_classic_solvers_at_gamma_zero():
    D = gaussian_mixture(RING, 0.3)
    x = torch.randn(16, 2) * 4
    t0, t1 = torch.tensor(4.0), torch.tensor(1.0)
    d = (x - D(x, t0)) / t0
    euler = x + (t1 - t0) * d
    torch.testing.assert_close(plugin_step(D, x, 4.0, 1.0, 0.0, "euler"), euler)
    d2 = (euler - D(euler, t1)) / t1
    torch.testing.assert_close(plugin_step(D, x, 4.0, 1.0, 0.0, "heun"), x + (t1 - t0) * 0.5 * (d + d2))
    with pytest.raises(ValueError, match="allowed: 'euler', 'heun', 'midpoint'"):
        plugin_step(D, x, 4.0, 1.0, 0.0, "rk4")


# --------------------------------------------------------------------------------------
# NFE, determinism, seeds
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [2, 3, 4, 5])
def test_nfe_is_two_steps_minus_one_with_analytic_first_step(steps):
    calls = []

    def D(x, s):
        calls.append(float(s))
        return unit_gaussian_denoiser(x, s)

    res = sample_adasde(D, torch.randn(4, 2) * 80, make_sigmas(steps, 0.002, 80.0), init_raw_coefficients(steps))
    assert res.nfe == len(calls) == 2 * steps - 1 == count_nfe(steps)
    assert steps_for_nfe(2 * steps - 1) == steps and len(res.trajectory) == steps
    res = sample_adasde(D, torch.randn(4, 2) * 80, make_sigmas(steps, 0.002, 80.0), init_raw_coefficients(steps), analytic_first_step=False)
    assert res.nfe == 2 * steps
    for solver, nfe in (("euler", steps), ("heun", 2 * steps), ("midpoint", 2 * steps)):
        r = sample_adasde(D, torch.randn(4, 2) * 80, make_sigmas(steps, 0.002, 80.0), init_raw_coefficients(steps), solver=solver, analytic_first_step=False)
        assert r.nfe == nfe == count_nfe(steps, solver, False)
    with pytest.raises(ValueError, match="not reachable"):
        steps_for_nfe(4)  # AdaSDE with AFS only reaches odd NFE


def test_same_seed_identical_different_seed_different_gamma_zero_deterministic():
    D = gaussian_mixture(RING, 0.3)
    sig = make_sigmas(3, 0.01, 20.0)
    raw = init_raw_coefficients(3, gamma_init=0.2)
    x = torch.randn(32, 2, generator=torch.Generator().manual_seed(0)) * 20

    def run(seed, gamma_max=0.3):
        return sample_adasde(D, x, sig, raw, generator=torch.Generator().manual_seed(seed), gamma_max=gamma_max).x

    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))
    assert torch.equal(run(1, 0.0), run(2, 0.0))
    g = torch.Generator().manual_seed(5)
    state = g.get_state()
    sample_adasde(D, x, sig, raw, generator=g, gamma_max=0.0)
    assert torch.equal(g.get_state(), state)  # the deterministic solver never touches the generator


def test_refined_grid_nests_the_student_grid():
    sig = make_sigmas(4, 0.002, 80.0, "time_uniform")
    fine = refine_sigmas(sig, 5)
    assert len(fine) == 4 * 5 + 1 and torch.equal(fine[::5], sig)
    assert bool((fine[:-1] > fine[1:]).all())


# --------------------------------------------------------------------------------------
# coefficient files
# --------------------------------------------------------------------------------------


def _write(path, nfe=5, steps=3, **meta):
    fields = dict(model="tiny-sd", nfe=nfe, sigma_min=0.03, sigma_max=14.0, guidance_scale=7.5)
    fields.update(meta)
    raw = torch.randn(steps, 4)
    sig = make_sigmas(steps, fields["sigma_min"], fields["sigma_max"])
    save_coefficients(path, raw, sig, CoefficientMetadata(**fields))
    return raw, sig


def test_coefficient_file_round_trip_is_safetensors_with_json_metadata(tmp_path):
    p = tmp_path / "c.safetensors"
    raw, sig = _write(p, training={"lr": 0.1, "iterations": 3})
    cf = load_coefficients(p)
    assert torch.equal(cf.raw, raw) and torch.equal(cf.sigmas, sig)
    assert cf.meta.model == "tiny-sd" and cf.meta.nfe == 5 and cf.meta.training["lr"] == 0.1
    assert cf.meta.sadakit_version
    header_len = int.from_bytes(p.read_bytes()[:8], "little")
    header = json.loads(p.read_bytes()[8 : 8 + header_len])
    assert json.loads(header["__metadata__"]["sadakit.adasde"])["nfe"] == 5
    assert b"pickle" not in p.read_bytes() and p.read_bytes()[8:9] == b"{"


def test_mismatch_errors_name_field_file_value_and_pipeline_value(tmp_path):
    p = tmp_path / "c.safetensors"
    _write(p)
    meta = load_coefficients(p).meta
    with pytest.raises(CoefficientMismatchError, match=r"nfe: file has 5, pipeline has 7"):
        check_compatible(meta, nfe=7)
    with pytest.raises(CoefficientMismatchError, match=r"model: file has 'tiny-sd', pipeline has 'sdxl-base'"):
        check_compatible(meta, model="sdxl-base")
    check_compatible(meta, model="tiny-sd", nfe=5, guidance_scale=7.5)
    with pytest.raises(CoefficientMismatchError, match="guidance_scale"):
        check_compatible(meta, guidance_scale=3.0)
    other = tmp_path / "plain.safetensors"
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, other)
    with pytest.raises(CoefficientMismatchError, match="not a sadakit AdaSDE coefficient file"):
        load_coefficients(other)
    with pytest.raises(CoefficientMismatchError, match=r"shape \(2, 4\).*needs \(3, 4\)"):
        save_coefficients(tmp_path / "bad.safetensors", torch.zeros(2, 4), make_sigmas(2, 0.1, 1.0), CoefficientMetadata(model="m", nfe=5))


# --------------------------------------------------------------------------------------
# scheduler: a diffusers-style loop against the core sampler, per parameterisation
# --------------------------------------------------------------------------------------


def _vp_sigma(alphas_cumprod: torch.Tensor, t: float) -> float:
    ab = alphas_cumprod.double()
    log_s = 0.5 * torch.log((1 - ab) / ab)
    i = min(int(t), len(ab) - 2)
    w = t - i
    return float(torch.exp((1 - w) * log_s[i] + w * log_s[i + 1]))


class _AnalyticModel:
    """A model that answers exactly as a network trained on data N(0, I) would, in its own chart."""

    def __init__(self, kind: str, alphas_cumprod: torch.Tensor | None = None):
        self.kind, self.ab, self.calls = kind, alphas_cumprod, 0

    def __call__(self, x_in: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        t = float(t)
        if self.kind == "flow":
            tau = t / 1000.0
            s = tau / (1 - tau)
            x_ve = x_in * (1 + s)
            x0 = x_ve / (1 + s**2)
            return (x_in - x0) / tau  # u = (x_flow - x0)/tau
        s = _vp_sigma(self.ab, t)
        x_ve = x_in * math.sqrt(1 + s * s)
        x0 = x_ve / (1 + s * s)
        eps = (x_ve - x0) / s
        if self.kind == "epsilon":
            return eps
        return (eps - s * x0) / math.sqrt(1 + s * s)  # v = alpha eps - sigma_vp x0


@pytest.mark.parametrize(
    "kind,solver", [("epsilon", "adasde"), ("v_prediction", "adasde"), ("flow", "adasde"), ("epsilon", "heun"), ("flow", "euler")]
)
def test_scheduler_loop_matches_core_sampler(tmp_path, kind, solver):
    from diffusers import EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler

    flow = kind == "flow"
    base = FlowMatchEulerDiscreteScheduler() if flow else EulerDiscreteScheduler(prediction_type=kind, beta_schedule="scaled_linear")
    smin, smax = (0.02, 50.0) if flow else (0.05, 10.0)
    afs = not flow
    nfe = count_nfe(3, solver, afs)
    raw = init_raw_coefficients(3, gamma_init=0.1) + 0.3 * torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    sig = make_sigmas(3, smin, smax)
    path = tmp_path / "c.safetensors"
    save_coefficients(path, raw, sig, CoefficientMetadata(model="analytic", nfe=nfe, solver=solver, analytic_first_step=afs, sigma_min=smin, sigma_max=smax, prediction_type="flow" if flow else kind))
    sched = AdaSDEScheduler.from_file(path, base)
    model = _AnalyticModel(kind, None if flow else base.alphas_cumprod)

    sched.set_timesteps(nfe)
    assert len(sched.timesteps) == nfe
    z = torch.randn(16, 2, generator=torch.Generator().manual_seed(1))
    latents = z * sched.init_noise_sigma
    for t in sched.timesteps:
        inp = sched.scale_model_input(latents, t)
        latents = sched.step(model(inp, t), t, latents, generator=torch.Generator().manual_seed(9) if t == sched.timesteps[0] else None).prev_sample
    assert model.calls == sched.nfe == nfe

    x_start = z * ((1 + smax) if flow else smax)
    ref = sample_adasde(unit_gaussian_denoiser, x_start, sig, raw, generator=torch.Generator().manual_seed(9), analytic_first_step=afs, solver=solver)
    assert ref.nfe == nfe
    expect = ref.x / (1 + smin) if flow else ref.x / math.sqrt(1 + smin**2)
    torch.testing.assert_close(latents, expect, rtol=2e-3, atol=2e-3)


def test_scheduler_inside_unmodified_sd_pipeline_counts_nfe_under_cfg(tmp_path):
    from sadakit.testing.pipelines import tiny_sd_pipeline

    pipe = tiny_sd_pipeline()
    ab = pipe.scheduler.alphas_cumprod
    smin, smax = float(((1 - ab[0]) / ab[0]).sqrt()), float(((1 - ab[-1]) / ab[-1]).sqrt())
    path = tmp_path / "sd.safetensors"
    save_coefficients(path, init_raw_coefficients(3, 0.1), make_sigmas(3, smin, smax), CoefficientMetadata(model="tiny-sd", nfe=5, sigma_min=smin, sigma_max=smax, guidance_scale=7.5))
    original = pipe.scheduler
    with pytest.raises(CoefficientMismatchError, match="model: file has 'tiny-sd', pipeline has 'other'"):
        pipe.scheduler = AdaSDEScheduler.from_file(path, pipe.scheduler, model="other")
    assert pipe.scheduler is original  # a refused file leaves the pipeline as it was

    pipe.scheduler = AdaSDEScheduler.from_file(path, pipe.scheduler, model="tiny-sd")
    batches = []
    pipe.unet.register_forward_pre_hook(lambda m, args: batches.append(args[0].shape[0]))

    def run(seed):
        return pipe("a red cube", num_inference_steps=5, guidance_scale=7.5, generator=torch.Generator().manual_seed(seed), output_type="latent").images

    a = run(0)
    assert batches == [2] * 5 and pipe.scheduler.nfe == 5  # CFG: one batched call per timestep
    assert torch.equal(a, run(0)) and not torch.equal(a, run(1))
    assert torch.isfinite(a).all()
    with pytest.raises(CoefficientMismatchError, match=r"nfe: file has 5 \(3 steps\), pipeline asked for num_inference_steps=7"):
        pipe("a red cube", num_inference_steps=7, output_type="latent")


def test_scheduler_inside_unmodified_flux_pipeline(tmp_path):
    from sadakit.testing.pipelines import tiny_flux_pipeline

    pipe = tiny_flux_pipeline()
    path = tmp_path / "flux.safetensors"
    meta = CoefficientMetadata(model="tiny-flux", nfe=6, analytic_first_step=False, sigma_min=0.01, sigma_max=100.0, prediction_type="flow")
    save_coefficients(path, init_raw_coefficients(3, 0.1), make_sigmas(3, 0.01, 100.0), meta)
    sd_path = tmp_path / "sd.safetensors"
    save_coefficients(sd_path, init_raw_coefficients(3), make_sigmas(3, 0.03, 14.0), CoefficientMetadata(model="sd", nfe=5, sigma_min=0.03, sigma_max=14.0))
    with pytest.raises(CoefficientMismatchError, match="prediction_type: file has 'epsilon', pipeline has 'flow'"):
        AdaSDEScheduler.from_file(sd_path, pipe.scheduler)
    pipe.scheduler = AdaSDEScheduler.from_file(path, pipe.scheduler)
    calls = []
    pipe.transformer.register_forward_pre_hook(lambda m, args: calls.append(1))

    def run(seed):
        return pipe("a cat", num_inference_steps=6, height=64, width=64, generator=torch.Generator().manual_seed(seed), output_type="latent").images

    a = run(0)
    assert len(calls) == 6 == pipe.scheduler.nfe
    assert torch.equal(a, run(0)) and not torch.equal(a, run(1))


# --------------------------------------------------------------------------------------
# distillation
# --------------------------------------------------------------------------------------


def test_short_distillation_reduces_loss_and_beats_initialisation(tmp_path):
    D = gaussian_mixture(RING, 0.2)
    noise = lambda b, g: torch.randn(b, 2, generator=g)  # noqa: E731
    cfg = DistillConfig(nfe=5, iterations=30, batch_size=128, teacher_factor=4, sigma_min=0.01, sigma_max=20.0, checkpoint_every=10)
    out = tmp_path / "gmm.safetensors"
    log = tmp_path / "loss.jsonl"
    res = distill(D, noise, cfg, model="ring6", output=out, log_path=log, progress=False)
    assert res.losses[-1] < 0.5 * res.initial_loss
    lines = [json.loads(s) for s in log.read_text().splitlines()]
    assert [d["iteration"] for d in lines] == list(range(30))

    # the fitted solver beats the untrained one on fresh noise, in distance to the teacher
    from sadakit.adasde.distill import teacher_trajectory

    cf = load_coefficients(out)
    assert cf.meta.model == "ring6" and cf.meta.training["iterations"] == 30
    x = torch.randn(512, 2, generator=torch.Generator().manual_seed(123)) * 20.0
    target = teacher_trajectory(D, x, cf.sigmas, 8)[-1]

    def err(raw):
        y = sample_adasde(D, x, cf.sigmas, raw, generator=torch.Generator().manual_seed(5), gamma_max=cf.meta.gamma_max).x
        return float((y - target).pow(2).sum(1).mean())

    assert err(cf.raw) < 0.7 * err(init_raw_coefficients(3, cfg.gamma_init, cfg.gamma_max))

    # resumable: the checkpoint holds iteration 30; a longer run continues from it
    res2 = distill(D, noise, attrs.evolve(cfg, iterations=32), model="ring6", output=out, progress=False)
    assert res2.resumed_from == 30 and len(res2.losses) == 32


def test_shard_sizes_split_the_batch():
    assert shard_sizes(10, 3) == [4, 3, 3] and sum(shard_sizes(257, 2)) == 257
    with pytest.raises(ValueError, match="smaller than the number of processes"):
        shard_sizes(1, 2)


def test_cli_inspect_prints_metadata_and_coefficients(tmp_path, capsys):
    from sadakit.adasde.cli import main

    p = tmp_path / "c.safetensors"
    _write(p)
    assert main(["inspect", str(p)]) == 0
    out = capsys.readouterr().out
    assert '"model": "tiny-sd"' in out and "step 2: gamma=" in out


def test_cli_distills_on_the_grid_given_with_sigmas(tmp_path):
    """--sigmas is the grid itself: stored exactly (schedule 'custom'); a malformed list is refused before any work."""
    from sadakit.adasde.cli import main

    top = float(torch.empty(()).uniform_(8.0, 14.0))
    grid = [top, top / 3, 0.7, 0.1, 0.03]
    out = tmp_path / "c.safetensors"
    assert main(["distill", "--testbed", "gmm2d-8", "--nfe", "7", "--iterations", "2", "--batch", "8",
                 "--teacher-factor", "2", "--sigmas", ",".join(f"{v!r}" for v in grid), "--out", str(out)]) == 0
    cf = load_coefficients(out)
    assert cf.meta.schedule == "custom" and cf.meta.nfe == 7
    torch.testing.assert_close(cf.sigmas, torch.tensor(grid, dtype=torch.float64))
    for bad in ("3,4", "5,x", "5,0", "5,nan"):
        with pytest.raises(SystemExit, match=r"--sigmas"):
            main(["distill", "--testbed", "gmm2d-8", "--sigmas", bad, "--out", str(tmp_path / "b.safetensors")])
    assert not (tmp_path / "b.safetensors").exists()


def test_a_plugin_form_without_churn_or_grid_to_learn_is_refused_before_training():
    from sadakit.testbeds.configs import get_testbed

    tb = get_testbed("gmm2d-8")
    cfg = DistillConfig(nfe=4, solver="euler", analytic_first_step=False, gamma_max=0.0, iterations=2, batch_size=4)
    with pytest.raises(ValueError, match=r"solver='euler' with gamma_max=0 and a fixed grid has nothing to learn"):
        distill(lambda x, s: tb.denoiser.denoise(x, s), lambda b, g: torch.randn((b, *tb.data_shape), generator=g), cfg,
                model="t", progress=False)
