"""What the testbed numbers support about SADA (small version of bench_testbed_sada.py)."""

import pytest

from sadakit.testbeds.sada_eval import VARIANTS, evaluate


@pytest.mark.parametrize("solver", ["euler", "flow-euler"])
def test_sada_defaults_beat_fewer_steps_at_equal_nfe(solver):
    variants = {k: VARIANTS[k] for k in ("sada (defaults)", "criterion only, x0 order 1")}
    rows = {r.method.split(" (")[0]: r for r in evaluate("gmm64-16", solver, steps=30, n_samples=48, variants=variants)}
    sada, fewer = rows["sada"], rows["fewer steps"]
    assert abs(sada.nfe - fewer.nfe) <= 1.0
    assert sada.nfe < 0.75 * 30
    # many times closer to the unaccelerated output than the same budget spent on fewer steps
    assert sada.rmse_to_baseline < 0.3 * fewer.rmse_to_baseline
    # and no further from the exact solution than the fewer-steps run
    assert sada.rmse_to_exact < fewer.rmse_to_exact
    # the published sign criterion alone rarely fires on these smooth trajectories
    crit = rows["criterion only, x0 order 1"]
    assert crit.nfe > 0.9 * 30 and crit.rmse_to_baseline < sada.rmse_to_baseline + 1e-3
