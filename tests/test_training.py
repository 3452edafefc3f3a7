"""The training pieces the bundled models' scripts share (sadakit.bundled.training)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from sadakit.bundled.training import (
    EMA,
    Checkpoint,
    LoopResult,
    Progress,
    drop_local_paths,
    ema_decay,
    encode_latent_bank,
    flow_matching_pair,
    optimizer_step,
    run_loop,
    sample_sigmas,
    seeded,
    v_prediction_pair,
    warmup_cosine,
)


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
    assert "step 4 (" in out and "s/step, wall " in out and ", eta " in out and out.rstrip().endswith("min)")
    assert progress.seconds >= 0


def test_progress_counts_wall_time_from_before_a_resume() -> None:
    progress = Progress(10, first_step=5, seconds_before=120.0)
    assert 120.0 <= progress.seconds < 130.0


def test_flow_matching_pair_against_float64_reference() -> None:
    """x_s = (1 - s) x0 + s eps and v = eps - x0: one Euler step of the full length from x_s
    with the true velocity lands on x0 (the path FlowMatchEulerDiscreteScheduler follows)."""
    x0, eps = torch.randn(6, 16, 16, dtype=torch.float64), torch.randn(6, 16, 16, dtype=torch.float64)
    s = torch.rand(6, dtype=torch.float64)
    xs, v = flow_matching_pair(x0.float(), eps.float(), s.float())
    torch.testing.assert_close(xs.double(), (1 - s.view(-1, 1, 1)) * x0 + s.view(-1, 1, 1) * eps, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(v.double(), eps - x0, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(xs.double() - s.view(-1, 1, 1) * v.double(), x0, atol=1e-5, rtol=1e-5)
    pure, _ = flow_matching_pair(x0.float(), eps.float(), torch.ones(6))
    torch.testing.assert_close(pure, eps.float())  # sigma 1 is noise only: no position leak


def test_sample_sigmas_puts_the_asked_fraction_at_high_noise() -> None:
    g = torch.Generator().manual_seed(int(torch.randint(10_000, (1,))))
    plain = sample_sigmas(20_000, 0.0, g)
    boosted = sample_sigmas(20_000, 0.5, g)
    assert 0 <= plain.min() and plain.max() < 1 and 0 <= boosted.min() and boosted.max() < 1
    assert (plain >= 0.85).float().mean().item() == pytest.approx(0.15, abs=0.015)
    assert (boosted >= 0.85).float().mean().item() == pytest.approx(0.5 + 0.5 * 0.15, abs=0.015)


def test_logit_normal_sigmas_weight_the_middle_and_keep_the_high_redraw() -> None:
    g = torch.Generator().manual_seed(int(torch.randint(10_000, (1,))))
    s = sample_sigmas(40_000, 0.0, g, base="logit-normal")
    assert 0 < s.min() and s.max() < 1
    # sigmoid(N(0, 1)): P(0.25 < s < 0.75) = P(|z| < logit 0.75 = 1.0986) = 0.7279 (uniform: 0.5)
    assert ((s > 0.25) & (s < 0.75)).float().mean().item() == pytest.approx(0.7279, abs=0.01)
    assert s.median().item() == pytest.approx(0.5, abs=0.01)
    boosted = sample_sigmas(40_000, 0.4, g, base="logit-normal")
    # P(s >= 0.85) under sigmoid(N(0, 1)) = P(z >= logit 0.85 = 1.7346) = 0.0414
    assert (boosted >= 0.85).float().mean().item() == pytest.approx(0.4 + 0.6 * 0.0414, abs=0.01)
    with pytest.raises(ValueError, match="logit-normal"):
        sample_sigmas(4, 0.0, g, base="cosine")


def test_seeded_seeds_both_streams() -> None:
    g1 = seeded(7, 3)
    a, b = torch.randn(3), torch.randn(3, generator=g1)
    g2 = seeded(7, 3)
    torch.testing.assert_close(torch.randn(3), a)
    torch.testing.assert_close(torch.randn(3, generator=g2), b)
    assert not torch.equal(torch.randn(3, generator=torch.Generator().manual_seed(7)), b)


def test_encode_latent_bank_keeps_order_and_size() -> None:
    class Posterior:
        def __init__(self, x: torch.Tensor) -> None:
            self.mean, self.std = x.mean(dim=1, keepdim=True), x.std(dim=1, keepdim=True)

    g = torch.Generator().manual_seed(1)
    batches = [(torch.arange(i * 4, i * 4 + 4), torch.randn(4, 3, 2, 2, generator=g)) for i in range(3)]
    it = iter(batches)
    labels, means, stds = encode_latent_bank(Posterior, lambda n: next(it), 12, chunk=4)
    assert torch.equal(labels, torch.arange(12)) and means.shape == (12, 1, 2, 2) and stds.shape == (12, 1, 2, 2)
    torch.testing.assert_close(means[4:8], batches[1][1].mean(dim=1, keepdim=True))


def _toy_run(steps: int, tmp: Path, stop_at: int | None = None, resume: bool = False, every: int = 3):
    """A seeded regression run on the loop; ``stop_at`` interrupts it (as a kill would)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    model = nn.Linear(4, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=0.2)
    sched = warmup_cosine(opt, steps)
    ema = EMA(model)
    losses: list[float] = []

    def loss_of_step(step: int) -> torch.Tensor:
        x = torch.randn(16, 4, generator=g)
        loss = (model(x) - x.sum(dim=1, keepdim=True)).pow(2).mean()
        losses.append(loss.item())
        return loss

    def on_step_end(step: int, result: LoopResult) -> bool:
        return stop_at is not None and step + 1 == stop_at

    result = run_loop(steps, loss_of_step, opt, sched, model.parameters(), 1.0, ema, "toy", log_every=100,
                      on_step_end=on_step_end, checkpoint=Checkpoint(tmp / "ckpt.pt", every, resume),
                      modules=(model,), generators=(g,))
    return result, losses, model, ema


def test_run_loop_resumes_exactly_where_it_stopped(tmp_path: Path) -> None:
    """An interrupted run continued from its checkpoint draws the same batches and ends with the
    same weights, EMA and smoothed loss as the uninterrupted run."""
    full, full_losses, full_model, full_ema = _toy_run(40, tmp_path / "a")
    assert sum(full_losses[-5:]) < 0.5 * sum(full_losses[:5])  # it learns
    _, first, _, _ = _toy_run(40, tmp_path / "b", stop_at=21)
    resumed, rest, model, ema = _toy_run(40, tmp_path / "b", resume=True)
    assert resumed.first_step == 21 and len(first) == 21 and len(rest) == 19
    assert first + rest == pytest.approx(full_losses, rel=1e-6)
    torch.testing.assert_close(model.weight, full_model.weight)
    torch.testing.assert_close(ema.averaged[0].weight, full_ema.averaged[0].weight)
    assert resumed.running_loss == pytest.approx(full.running_loss, rel=1e-6)


def test_run_loop_resume_without_a_checkpoint_says_so(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        _toy_run(4, tmp_path / "none", resume=True)


def test_drop_local_paths(tmp_path: Path) -> None:
    import json

    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text(json.dumps({"_name_or_path": "/home/x", "a": 1}))
    drop_local_paths(tmp_path)
    assert json.loads((tmp_path / "unet" / "config.json").read_text()) == {"a": 1}
