"""SADAConfig.budget: the plan of computed calls, the gap-aware order, and what it buys
(docs/frontier.md)."""

import random

import pytest
import torch

import sadakit
from sadakit.runtime.budget import computed_calls, order_for
from sadakit.testbeds.solvers import make_pipeline


def test_plan_spends_exactly_the_budget_as_warmup_plus_a_regular_interval():
    rng = random.Random()
    for _ in range(200):
        n = rng.randint(2, 120)
        budget = rng.uniform(0.02, 1.0)
        warmup, final = rng.randint(1, 5), rng.randint(0, 3)
        calls = computed_calls(n, budget, warmup, final)
        k = max(1, round(budget * n))
        assert calls == tuple(sorted(set(calls))) and all(0 <= c < n for c in calls)
        if k >= n:
            assert calls == tuple(range(n))
            continue
        assert len(calls) <= k
        final_kept = min(final, k - 1)
        assert calls[len(calls) - final_kept:] == tuple(range(n - final_kept, n))
        head = min(warmup, k - final_kept)
        assert calls[:head] == tuple(range(head))
    # the measured plans of docs/frontier.md, 50 calls
    assert computed_calls(50, 0.25, 1, 2) == (0, 5, 10, 15, 20, 25, 30, 35, 40, 45, 48, 49)
    assert computed_calls(50, 0.4, 1, 2) == (0, 1, 2) + tuple(range(5, 48, 3)) + (48, 49)
    # every count from 1 to 49 of 50 is met exactly
    assert all(len(computed_calls(50, k / 50, 1, 2)) == k for k in range(1, 51))


def test_even_plan_spreads_exactly_the_budget_from_the_first_call():
    rng = random.Random()
    for _ in range(200):
        n = rng.randint(2, 120)
        budget = rng.uniform(0.02, 0.99)
        k = max(1, round(budget * n))
        calls = computed_calls(n, budget, rng.randint(1, 5), rng.randint(0, 3), "even")
        if k >= n:
            assert calls == tuple(range(n))
            continue
        assert len(calls) == k and calls[0] == 0 and calls == tuple(sorted(set(calls))) and calls[-1] < n
        gaps = {b - a for a, b in zip(calls, calls[1:])} | {n - calls[-1]}
        assert max(gaps) - min(gaps) <= 1  # as even as integers allow, the tail included
        if n % k == 0:
            assert calls == tuple(range(0, n, n // k))
    assert computed_calls(28, 0.5, 1, 2, "even") == tuple(range(0, 28, 2))
    with pytest.raises(ValueError, match="budget_spread"):
        sadakit.SADAConfig(budget=0.5, budget_spread="uneven")


def test_order_never_extrapolates_beyond_the_nodes_span_or_the_gap_limit():
    calls = (0, 1, 2, 5, 8, 11, 14)
    # call 3: one call past node 2, whose neighbour is 1 call back: linear
    assert order_for(calls, 3, max_order=1, max_gap=2) == 1
    # call 4: two calls past node 2, the nodes span only 1: constant x0 (the solver's own step)
    assert order_for(calls, 4, max_order=1, max_gap=2) == 0
    # call 7: two past 5, nodes 5 and 2 span 3: linear; quadratic too (5, 2, 1 span 4)
    assert order_for(calls, 7, max_order=1, max_gap=2) == 1
    assert order_for(calls, 7, max_order=2, max_gap=2) == 2
    # a gap of 3 is held constant unless allowed
    plan = (0, 4, 8, 12)
    assert order_for(plan, 11, max_order=1, max_gap=2) == 0
    assert order_for(plan, 11, max_order=1, max_gap=3) == 1
    assert order_for(plan, 3, max_order=1, max_gap=3) == 0  # only one node before call 3
    assert order_for(plan, 10, max_order=0, max_gap=9) == 0


def test_the_automatic_gap_limit_is_half_the_spacing_rounded_up():
    # computed calls 5 apart: linear up to 3 calls past the newest, then x0 held
    plan = (0, 5, 10, 15)
    assert [order_for(plan, n, max_order=1, max_gap=None) for n in (11, 12, 13, 14)] == [1, 1, 1, 0]
    # 4 apart: up to 2 (as the fixed limit of 2 did)
    plan = (0, 4, 8, 12)
    assert [order_for(plan, n, max_order=1, max_gap=None) for n in (9, 10, 11)] == [1, 1, 0]
    # 8 apart: up to 3 (the cap); in a warm-up (calls 1 apart) only 1
    assert [order_for((0, 8, 16), n, max_order=1, max_gap=None) for n in (18, 19, 20)] == [1, 1, 0]
    assert [order_for((0, 1, 2, 6), n, max_order=1, max_gap=None) for n in (3, 4)] == [1, 0]
    # the default plans at >= 0.33 of 50 calls are unchanged from the fixed limit of 2
    for budget in (0.5, 0.4, 0.33):
        calls = computed_calls(50, budget, 1, 2)
        skipped = [n for n in range(50) if n not in calls]
        assert ([order_for(calls, n, 1, None) for n in skipped] == [order_for(calls, n, 1, 2) for n in skipped])
    assert sadakit.SADAConfig(budget=0.25).budget_order_gap is None


def test_budget_is_validated_with_the_field_named():
    for bad in (0, 1.5, -0.1, True, "half"):
        with pytest.raises(ValueError, match="SADAConfig.budget must be"):
            sadakit.SADAConfig(budget=bad)
    with pytest.raises(ValueError, match="SADAConfig.budget_order must be"):
        sadakit.SADAConfig(budget=0.5, budget_order=4)
    with pytest.raises(ValueError, match="SADAConfig.budget_order_gap must be"):
        sadakit.SADAConfig(budget=0.5, budget_order_gap=0)
    assert sadakit.SADAConfig().budget is None  # the default behaviour is unchanged
    assert sadakit.SADAConfig(budget=0.3, budget_order=2).history_len == 3


def _rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).reshape(a.shape[0], -1).pow(2).mean(1).sqrt().median())


@pytest.mark.parametrize("solver", ["euler", "flow-euler"])
def test_budget_follows_its_plan_and_beats_fewer_steps_on_the_testbed(solver):
    pipe = make_pipeline("gmm64-16", solver)
    z = torch.randn(24, *pipe.testbed.mixture.data_shape, dtype=torch.float64)
    base = pipe(num_inference_steps=50, latents=z).samples
    for budget in (0.5, 0.25):
        plan = computed_calls(50, budget, 1, 2)
        errors = {}
        for order in (1, 0):
            config = sadakit.SADAConfig(budget=budget, budget_order=order, token_sparsity=False, count_flops=False)
            sadakit.accelerate(pipe, config)
            try:
                out = pipe(num_inference_steps=50, latents=z).samples
                rep = sadakit.report(pipe)
            finally:
                sadakit.remove(pipe)
            assert rep.per_sample_computed == [len(plan)] * z.shape[0]
            assert rep.decisions == "".join("F" if n in plan else "S" for n in range(50))
            errors[order] = _rmse(out, base)
        fewer = _rmse(pipe(num_inference_steps=len(plan), latents=z).samples, base)
        # measured (32 samples): Euler 0.0007 vs 0.024 at 0.5, 0.017 vs 0.064 at 0.25;
        # flow Euler 0.004 vs 0.014, 0.034 vs 0.046
        assert errors[1] < 0.9 * fewer, (budget, errors, fewer)
        # the gap-aware linear extrapolation is what buys it over holding x0 constant
        assert errors[1] < 0.8 * errors[0], (budget, errors)


def test_budget_on_a_tiny_sd_pipeline_runs_the_planned_forwards(sd_vpred_pipe):
    """A real diffusers pipeline (v-prediction, CFG batched): the network runs exactly on the
    planned calls, the output stays close, and removing restores the plain output."""
    from plugin_checks import Forwards, psnr

    pipe = sd_vpred_pipe
    sadakit.remove(pipe)
    kwargs = dict(prompt=["a cat", "a dog"], num_inference_steps=20, output_type="latent", guidance_scale=4.0)
    base = pipe(**kwargs, generator=torch.Generator().manual_seed(5)).images
    plan = computed_calls(20, 0.3, 1, 2)
    forwards = Forwards(pipe.unet.conv_in)
    sadakit.accelerate(pipe, sadakit.SADAConfig(budget=0.3))
    try:
        out = pipe(**kwargs, generator=torch.Generator().manual_seed(5)).images
        rep = sadakit.report(pipe)
    finally:
        sadakit.remove(pipe)
        forwards.close()
    assert forwards.count == len(plan) == 6
    assert rep.decisions == "".join("F" if n in plan else "S" for n in range(20))
    assert rep.partial_calls == 0
    assert torch.isfinite(out).all() and psnr(out, base) > 20
    # a plan computes whole calls or none: no block residual is kept for partial calls that never come
    assert any("token sparsity off under SADAConfig.budget" in note for note in rep.notes), rep.notes
    sadakit.accelerate(pipe, sadakit.SADAConfig(budget=0.3, token_sparsity=False))
    try:
        whole = pipe(**kwargs, generator=torch.Generator().manual_seed(5)).images
        rep_whole = sadakit.report(pipe)
    finally:
        sadakit.remove(pipe)
    assert torch.equal(whole, out)
    assert rep.cache_bytes == rep_whole.cache_bytes > 0
    again = pipe(**kwargs, generator=torch.Generator().manual_seed(5)).images
    assert torch.equal(again, base)


def test_bench_even_method_runs_the_even_plan(sd_vpred_pipe):
    """``sada-even:<b>`` in the bench: the same budget, its calls where fewer steps would put them."""
    from sadakit.bench.methods import parse_method

    pipe = sd_vpred_pipe
    sadakit.remove(pipe)
    kwargs = dict(prompt=["a cat"], num_inference_steps=20, output_type="latent", guidance_scale=4.0)
    method = parse_method("sada-even:0.25")
    method.apply(pipe)
    try:
        pipe(**kwargs, generator=torch.Generator().manual_seed(1))
        rep = sadakit.report(pipe)
    finally:
        method.remove(pipe)
    plan = computed_calls(20, 0.25, 1, 0, "even")
    assert plan == (0, 4, 8, 12, 16)
    assert rep.decisions == "".join("F" if n in plan else "S" for n in range(20))
    assert not sadakit.is_accelerated(pipe)


def test_budget_under_heun_follows_its_plan_and_beats_fewer_heun_steps():
    """Heun's calls come in pairs, the next step's first stage at the noise level of the call
    before: the plan skips those too (reusing that call's x0), so it computes exactly its count."""
    from sadakit.tuning import row_psnr_db

    tb = make_pipeline("gmm64-16", "heun")
    seed = random.randrange(1000)
    run = lambda steps: tb(batch_size=64, num_inference_steps=steps,
                           generator=torch.Generator().manual_seed(seed)).samples
    reference = run(20)  # 39 calls
    for budget in (0.5, 0.25):
        sadakit.accelerate(tb, sadakit.SADAConfig(budget=budget))
        try:
            out = run(20)
            rep = sadakit.report(tb)
        finally:
            sadakit.remove(tb)
        plan = computed_calls(39, budget, 1, 2)
        assert rep.denoiser_calls == 39 and rep.network_calls == len(plan)
        assert rep.decisions == "".join("F" if n in plan else "S" for n in range(39))
        fewer = run((len(plan) + 1) // 2)  # Heun with as many calls: 2 per step, the last step 1
        # measured (seed 0, 128 samples): 73.5 vs 45.3 dB at 0.5, 56.2 vs 37.4 at 0.25
        assert row_psnr_db(out, reference).median() > row_psnr_db(fewer, reference).median() + 5


def test_late_phase_order_automatic_follows_the_budget_rule_at_long_intervals():
    """late_phase_order=None: quadratic at the automatic intervals; beyond them linear over the
    first half of each interval and x0 held over the rest; an explicit order is kept as given."""
    from types import SimpleNamespace

    from sadakit.runtime.decision import Decider

    def orders(config, expected=50):
        decider = Decider(config, latent_to_grid=None, note=lambda _: None)
        late = decider.late_index(SimpleNamespace(expected_calls=expected))
        return [decider.late_order(SimpleNamespace(expected_calls=expected, call_index=late + g)) for g in range(12)]

    assert orders(sadakit.SADAConfig()) == [2] * 12  # automatic interval 3 at 50 calls: as before
    assert orders(sadakit.SADAConfig(late_phase_interval=2)) == [2] * 12
    assert orders(sadakit.SADAConfig(late_phase_interval=6)) == [1, 1, 1, 1, 0, 0] * 2
    assert orders(sadakit.SADAConfig(late_phase_interval=4)) == [1, 1, 1, 0] * 3
    assert orders(sadakit.SADAConfig(late_phase_interval=8)) == [1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1]
    assert orders(sadakit.SADAConfig(late_phase_interval=6, late_phase_order=2)) == [2] * 12
    with pytest.raises(ValueError, match="late_phase_order"):
        sadakit.SADAConfig(late_phase_order=4)


def test_default_late_phase_is_bit_identical_to_an_explicit_quadratic():
    tb = make_pipeline("gmm64-16", "euler")
    seed = random.randrange(1000)
    outs = []
    for config in (sadakit.SADAConfig(), sadakit.SADAConfig(late_phase_order=2)):
        sadakit.accelerate(tb, config)
        try:
            outs.append(tb(batch_size=32, num_inference_steps=50, generator=torch.Generator().manual_seed(seed)).samples)
        finally:
            sadakit.remove(tb)
    assert torch.equal(outs[0], outs[1])
