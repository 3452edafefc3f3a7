"""The training pieces the bundled models' scripts share (sadakit.bundled.training)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sadakit.bundled.training import EMA, Progress, ema_decay, optimizer_step, v_prediction_pair, warmup_cosine


def test_v_prediction_pair_against_float64_reference() -> None:
    """x_t = sqrt(a) x0 + sqrt(1-a) eps, v = sqrt(a) eps - sqrt(1-a) x0, and x0 comes back
    from (x_t, v) as sqrt(a) x_t - sqrt(1-a) v (the identity v-prediction samplers use)."""
    alphas = torch.rand(1000, dtype=torch.float64).sort(descending=True).values
    x0, eps = torch.randn(5, 4, 8, 8, dtype=torch.float64), torch.randn(5, 4, 8, 8, dtype=torch.float64)
    t = torch.randint(0, 1000, (5,))
    xt, v = v_prediction_pair(x0.float(), eps.float(), alphas.float(), t)
    a = alphas[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(xt.double(), a.sqrt() * x0 + (1 - a).sqrt() * eps, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(v.double(), a.sqrt() * eps - (1 - a).sqrt() * x0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close((a.sqrt() * xt.double() - (1 - a).sqrt() * v.double()), x0, atol=1e-5, rtol=1e-5)
    xt3, _ = v_prediction_pair(x0[:, 0].float(), eps[:, 0].float(), alphas.float(), t)  # any rank
    torch.testing.assert_close(xt3, xt[:, 0])


def test_ema_follows_the_warmup_decay() -> None:
    live = nn.Linear(3, 2)
    ema = EMA(live, max_decay=0.9)
    start = live.weight.detach().clone()
    assert not any(p.requires_grad for p in ema.averaged[0].parameters()) and not ema.averaged[0].training
    expected = start.clone()
    for step in range(30):
        with torch.no_grad():
            live.weight.add_(torch.randn_like(live.weight))
        ema.update(step)
        d = min(0.9, (1 + step) / (10 + step))
        assert ema_decay(step, 0.9) == d
        expected = d * expected + (1 - d) * live.weight.detach()
    torch.testing.assert_close(ema.averaged[0].weight, expected)


def test_warmup_cosine_schedule() -> None:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, 100)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.2 * 1.0)  # warm-up over 5 steps: (0 + 1) / 5
    assert lrs[4] == pytest.approx(0.5 * (1 + math.cos(math.pi * 4 / 100)))
    assert lrs[50] == pytest.approx(0.5) and lrs[-1] < 0.01
    assert all(a >= b for a, b in zip(lrs[5:], lrs[6:]))


def test_optimizer_step_clips_only_when_asked() -> None:
    for max_norm, expected in ((None, 100.0), (1.0, 1.0)):
        p = nn.Parameter(torch.zeros(4))
        opt = torch.optim.SGD([p], lr=1.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        optimizer_step((p * torch.tensor([50.0, 50.0, 50.0, 50.0])).sum(), opt, sched, [p], max_norm)
        assert p.norm().item() == pytest.approx(expected, rel=1e-5)


def test_progress_reports_rate_and_eta(capsys) -> None:
    progress = Progress(10)
    progress(4, "step 4")
    out = capsys.readouterr().out
    assert "step 4 (" in out and "s/step, eta " in out and out.rstrip().endswith("min)")
    assert progress.seconds >= 0
