"""Round trips and schedule ends of the parameterisation conversions, against float64."""

import math

import pytest
import torch
from diffusers import EulerDiscreteScheduler

from sadakit.core.parameterization import (
    EDMParameterization,
    FlowParameterization,
    VPParameterization,
    flow_state_to_ve,
    tau_to_ve_sigma,
    ve_sigma_to_tau,
    ve_state_to_flow,
    vp_state_to_flow,
    vp_to_ve_sigma,
)

DEV = torch.device("cpu")


def sd_alphas() -> torch.Tensor:
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_vp_round_trip(prediction):
    param = VPParameterization(sd_alphas(), prediction)
    x = torch.randn(3, 4, 8, 6, dtype=torch.float64)
    out = torch.randn_like(x)
    for t in [0, 1, 17.5, 500, 999]:
        lvl = param.level(torch.tensor(float(t)), DEV)
        x0 = param.x0_from_output(x, out, lvl)
        back = param.output_from_x0(x, x0, lvl)
        assert torch.allclose(back, out, rtol=1e-4, atol=1e-4 * out.abs().max().item() * (1 if t < 990 else 20))


def test_vp_level_matches_float64_formulas():
    ab = sd_alphas()
    param = VPParameterization(ab, "epsilon")
    for t in torch.randint(0, 1000, (20,)).tolist():
        lvl = param.level(torch.tensor(t), DEV)
        a, s = ab[t].sqrt(), (1 - ab[t]).sqrt()
        assert lvl.tau.item() == pytest.approx((s / (a + s)).item(), rel=1e-5)
        assert lvl.in_scale.item() == pytest.approx((1 / (a + s)).item(), rel=1e-5)
    # eps-prediction: x0 = (x - s eps) / a
    t = 321
    lvl = param.level(torch.tensor(t), DEV)
    x, eps = torch.randn(2, 5, dtype=torch.float64), torch.randn(2, 5, dtype=torch.float64)
    ref = (x - (1 - ab[t]).sqrt() * eps) / ab[t].sqrt()
    assert torch.allclose(param.x0_from_output(x, eps, lvl), ref, rtol=1e-5)


def test_fractional_timesteps_follow_euler_sigma_interpolation():
    """Karras sigmas give fractional timesteps; the noise level must match the scheduler's sigma."""
    sched = EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, use_karras_sigmas=True)
    sched.set_timesteps(13)
    param = VPParameterization(sched.alphas_cumprod, "epsilon")
    for t, sigma in zip(sched.timesteps, sched.sigmas[:-1]):
        tau = param.level(t, DEV).tau.item()
        assert tau == pytest.approx(sigma.item() / (1 + sigma.item()), rel=2e-3)


def test_vp_ends_are_finite():
    ab = torch.tensor([1e-20, 0.0, 0.5, 1.0], dtype=torch.float64)
    x = torch.randn(4, 3, dtype=torch.float64)
    x_flow, tau = vp_state_to_flow(x, ab[:, None])
    assert torch.isfinite(x_flow).all() and torch.isfinite(tau).all()
    assert tau[0].item() == pytest.approx(1.0) and tau[1].item() == pytest.approx(1.0) and tau[3].item() == 0.0
    assert torch.allclose(x_flow[1], x[1]) and torch.allclose(x_flow[3], x[3])
    assert math.isinf(vp_to_ve_sigma(torch.tensor([0.0], dtype=torch.float64)).item())
    # parameterisation with a zero-terminal-SNR schedule: level is finite at the end
    zt = sd_alphas().clone()
    zt[-1] = 0.0
    lvl = VPParameterization(zt, "v_prediction").level(torch.tensor(999), DEV)
    assert lvl.tau.item() == pytest.approx(1.0, abs=1e-6) and torch.isfinite(lvl.in_scale)
    v = torch.randn(2, 3)
    x0 = VPParameterization(zt, "v_prediction").x0_from_output(x[:2].float(), v, lvl)
    assert torch.isfinite(x0).all()


def test_flow_chart_ends():
    assert ve_sigma_to_tau(torch.tensor([math.inf])).item() == 1.0
    assert math.isinf(tau_to_ve_sigma(torch.tensor([1.0])).item())
    assert tau_to_ve_sigma(torch.tensor([0.0])).item() == 0.0
    x = torch.randn(5, dtype=torch.float64)
    sigma = torch.tensor(3.7, dtype=torch.float64)
    xf, tau = ve_state_to_flow(x, sigma)
    xv, s2 = flow_state_to_ve(xf, tau)
    assert torch.allclose(xv, x) and torch.allclose(s2, sigma)


def test_flow_round_trip_including_t_one():
    param = FlowParameterization()
    x = torch.randn(2, 16, 8, dtype=torch.float64)
    u = torch.randn_like(x)
    for t in [1.0, 0.999, 0.5, 0.01]:
        lvl = param.level(torch.tensor(t), DEV)
        x0 = param.x0_from_output(x, u, lvl)
        assert torch.isfinite(x0).all()
        assert torch.allclose(param.output_from_x0(x, x0, lvl), u, atol=1e-5)
        assert torch.allclose(x0, x - t * u, atol=1e-6)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_edm_matches_diffusers_preconditioning(prediction):
    from diffusers import EDMEulerScheduler

    sched = EDMEulerScheduler(prediction_type=prediction)
    sched.set_timesteps(8)
    param = EDMParameterization(sched.config.sigma_data, prediction)
    sample = torch.randn(2, 4, 6, 6)
    for t, sigma in zip(sched.timesteps, sched.sigmas[:-1]):
        lvl = param.level(t, DEV)
        model_in = sched.precondition_inputs(sample, sigma)
        f = torch.randn_like(sample)
        ref = sched.precondition_outputs(sample, f, sigma)
        x0 = param.x0_from_output(model_in, f, lvl)
        assert torch.allclose(x0, ref, rtol=1e-4, atol=1e-4 * (1 + sigma.item()))
        assert torch.allclose(param.output_from_x0(model_in, x0, lvl), f, rtol=1e-3, atol=1e-3)
        assert lvl.tau.item() == pytest.approx(sigma.item() / (1 + sigma.item()), rel=1e-4)


def test_invalid_prediction_type():
    with pytest.raises(ValueError, match="allowed"):
        VPParameterization(sd_alphas(), "flow")
