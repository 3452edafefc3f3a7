"""Criterion, predictor and extrapolation numerics against float64 references."""

import numpy as np
import pytest
import torch

from sadakit.core.criterion import (
    adams_bashforth_predict,
    group_scores,
    lagrange_integral_weights,
    sample_scores,
    stability_momentum,
)
from sadakit.core.extrapolation import extrapolate, lagrange_extrapolation_weights
from sadakit.core import tokens


def reference_weights(nodes, a, b):
    """Exact integrals of the Lagrange basis, by numpy polynomial algebra in float64."""
    nodes = np.asarray(nodes, dtype=np.float64)
    out = []
    for j in range(len(nodes)):
        poly = np.poly1d([1.0])
        for i in range(len(nodes)):
            if i != j:
                poly = poly * np.poly1d([1.0, -nodes[i]]) / (nodes[j] - nodes[i])
        integ = poly.integ()
        out.append(integ(b) - integ(a))
    return np.array(out)


def test_uniform_steps_give_ab3_weights():
    h = 0.05
    nodes = torch.tensor([0.5, 0.55, 0.6], dtype=torch.float64)  # newest first, time decreasing
    w = lagrange_integral_weights(nodes, nodes[0], torch.tensor(0.45, dtype=torch.float64))
    expected = -h * torch.tensor([23.0, -16.0, 5.0], dtype=torch.float64) / 12.0
    assert torch.allclose(w, expected, atol=1e-12)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_variable_steps_match_float64_reference(k):
    gen = torch.Generator().manual_seed(k)
    for _ in range(10):
        times = torch.sort(torch.rand(k + 1, generator=gen, dtype=torch.float64), descending=True).values
        t_next, nodes = times[-1], times[:k]
        w32 = lagrange_integral_weights(nodes.float(), nodes[0].float(), t_next.float())
        ref = reference_weights(nodes.numpy(), nodes[0].item(), t_next.item())
        scale = np.abs(ref).max()
        assert np.allclose(w32.double().numpy(), ref, atol=2e-4 * scale + 1e-7)


def test_predictor_is_exact_for_quadratic_drift():
    # x(t) = t^3 has drift 3 t^2: AB3 on true nodes integrates it exactly
    times = [torch.tensor(0.9, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64), torch.tensor(1.3, dtype=torch.float64)]
    drifts = [3 * t**2 * torch.ones(2, 3, dtype=torch.float64) for t in times]
    x_n = times[0] ** 3 * torch.ones(2, 3, dtype=torch.float64)
    t_next = torch.tensor(0.62, dtype=torch.float64)
    pred = adams_bashforth_predict(x_n, drifts, times, t_next)
    assert torch.allclose(pred, t_next**3 * torch.ones_like(pred), atol=1e-12)


def test_momentum_sign_and_per_sample_scores():
    times = [torch.tensor(t) for t in (0.5, 0.6, 0.7)]
    drifts = [torch.full((2, 4), v) for v in (1.0, 0.0, 0.0)]  # curvature +1 everywhere
    x_n = torch.zeros(2, 4)
    t_next = torch.tensor(0.4)
    pred = adams_bashforth_predict(x_n, drifts, times, t_next)
    x_next = pred.clone()
    x_next[0] += 0.1  # residual +: m > 0, unstable
    x_next[1] -= 0.1  # residual -: m < 0, stable
    m = stability_momentum(x_next, x_n, drifts, times, t_next)
    s = sample_scores(m)
    assert s[0] > 0 and s[1] < 0
    g = group_scores(torch.tensor([1.0, -3.0, 2.0, -1.0]), torch.tensor([[0, 2], [1, 3]]))
    assert torch.allclose(g, torch.tensor([1.5, -2.0]))


def test_extrapolation_exact_for_polynomials_per_row():
    gen = torch.Generator().manual_seed(0)
    k = 3
    times = torch.rand(k, 4, generator=gen, dtype=torch.float64) + torch.arange(k, dtype=torch.float64)[:, None]
    coef = torch.randn(3, 4, 5, generator=gen, dtype=torch.float64)

    def poly(t):  # quadratic per row, (4, 5)
        return coef[0] + coef[1] * t[..., None] + coef[2] * t[..., None] ** 2

    values = torch.stack([poly(times[j]) for j in range(k)])
    t_eval = torch.rand(4, generator=gen, dtype=torch.float64) * -0.5
    assert torch.allclose(extrapolate(values, times, t_eval), poly(t_eval), atol=1e-9)
    w = lagrange_extrapolation_weights(times, t_eval)
    assert torch.allclose(w.sum(0), torch.ones(4, dtype=torch.float64))


def test_token_grids_and_selection():
    assert tokens.grid_for_tokens((12, 8), 96) == (12, 8)
    assert tokens.grid_for_tokens((12, 8), 24) == (6, 4)
    assert tokens.grid_for_tokens((25, 16), 13 * 8) == (13, 8)  # padded odd side
    assert tokens.grid_for_tokens((12, 8), 7) is None
    hw = (6, 4)
    union = torch.zeros(24, dtype=torch.bool)
    for phase in range(4):
        a = tokens.anchor_mask(hw, 2, phase, torch.device("cpu"))
        assert a.sum() == 6  # one per 2x2 window
        union |= a
    assert union.all()  # every token is an anchor once per cycle
    scores = torch.randn(2, 24)
    req = tokens.required_mask(scores, torch.zeros(24, dtype=torch.bool))
    k = int(req.sum(1).max())
    idx = tokens.select_indices(scores, req, k)
    for r in range(2):
        chosen = set(idx[r].tolist())
        assert set(torch.nonzero(req[r]).flatten().tolist()) <= chosen
        assert idx[r].tolist() == sorted(chosen)
    pooled = tokens.pool_scores(torch.randn(2, 12, 8), (6, 4))
    assert pooled.shape == (2, 24)


def test_config_automatic_late_interval_and_validation():
    from sadakit import SADAConfig

    cfg = SADAConfig()
    assert cfg.interval_for(50) == 3 and cfg.interval_for(20) == 2 and cfg.interval_for(None) == 2
    assert SADAConfig(late_phase_interval=4).interval_for(20) == 4
    assert cfg.history_len == 3
    with pytest.raises(ValueError, match="late_phase_interval"):
        SADAConfig(late_phase_interval=1)
    with pytest.raises(ValueError, match="late_phase_start"):
        SADAConfig(late_phase_start=1.5)
