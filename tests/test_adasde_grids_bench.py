"""benchmarks/bench_adasde_grids.py: the diffusers grids it builds (VP as before, flow-matching for Flux)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_adasde_grids as bench  # noqa: E402

from sadakit.bench.harness import ForwardCounter  # noqa: E402
from sadakit.testing import pipelines as tp  # noqa: E402


def test_vp_custom_grid_replaces_sigmas_and_maps_timesteps():
    """A tuned log-linear grid on a VP scheduler: its sigmas for the math, the training index of each for the model."""
    base = tp.tiny_sd_pipeline().scheduler.config
    rng = np.random.default_rng()
    hi, lo = float(rng.uniform(5, 30)), float(rng.uniform(0.05, 0.5))
    custom = bench.loglinear(5, hi, lo)
    sched = bench.make_scheduler("euler", "default", base, custom)
    sched.set_timesteps(5)
    np.testing.assert_allclose(sched.sigmas[:-1].numpy(), custom, rtol=1e-6)
    assert float(sched.sigmas[-1]) == 0.0
    ab = sched.alphas_cumprod.numpy().astype(np.float64)
    log_sigmas = np.log(((1 - ab) / ab) ** 0.5)
    np.testing.assert_allclose(sched.timesteps.numpy(), [sched._sigma_to_t(s, log_sigmas) for s in custom], rtol=1e-5)
    karras = bench.make_scheduler("dpm++2m", "karras", base)
    assert karras.config.use_karras_sigmas and karras.config.solver_order == 2
    assert bench.make_scheduler("unipc", "trailing", base).config.timestep_spacing == "trailing"


def _true_cfg_flux():
    pipe = tp.tiny_flux_pipeline(guidance_embeds=False)
    pipe.set_progress_bar_config(disable=True)
    kw = {"height": 32, "width": 32, "max_sequence_length": 16, "true_cfg_scale": 3.0, "negative_prompt": "",
          "output_type": "latent"}
    return pipe, kw


@pytest.mark.parametrize("label", list(bench.FLOW_SOLVERS))
def test_flow_solvers_make_two_calls_per_evaluation_under_true_cfg(label):
    pipe, kw = _true_cfg_flux()
    base = pipe.scheduler
    counter = ForwardCounter(pipe.transformer)
    nfe = 5
    outs = {}
    for grid in bench.FLOW_SOLVERS[label][2]:
        sched = bench.make_flow_scheduler(label, grid, base.config, shift=2.0, bottom=0.3)
        pipe.scheduler = sched
        counter.reset()
        outs[grid] = pipe("a red circle", num_inference_steps=bench.flow_steps(label, nfe),
                          generator=torch.Generator().manual_seed(0), **kw).images
        assert counter.count == 2 * nfe, (label, grid)
        assert torch.isfinite(outs[grid]).all()
    counter.close()
    if "shift" in outs:
        assert not torch.equal(outs["shift"], outs["default"])  # the option reached the solver


def test_flow_tuned_grid_is_the_shifted_linspace_to_its_bottom():
    pipe, kw = _true_cfg_flux()
    shift, bottom = float(np.random.default_rng().uniform(0.5, 4)), float(np.random.default_rng().uniform(0.05, 0.4))
    sched = bench.make_flow_scheduler("flow-euler", "tuned", pipe.scheduler.config, shift, bottom)
    pipe.scheduler = sched
    pipe("a red circle", num_inference_steps=5, generator=torch.Generator().manual_seed(0), **kw)
    expected = bench.shifted(np.linspace(1.0, bottom, 5), shift)
    np.testing.assert_allclose(sched.sigmas[:-1].numpy(), expected, rtol=1e-5)
    assert float(sched.sigmas[-1]) == 0.0


def test_flow_options_that_do_not_apply_are_refused():
    config = tp.tiny_flux_pipeline(guidance_embeds=False).scheduler.config
    with pytest.raises(ValueError, match=r"flow-heun: grid 'karras' does not apply; allowed: default, shift"):
        bench.make_flow_scheduler("flow-heun", "karras", config)
    with pytest.raises(ValueError, match=r"flow-heun makes 2 steps - 1 calls: NFE 6 is not reachable"):
        bench.flow_steps("flow-heun", 6)
    assert bench.flow_steps("flow-heun", 7) == 4 and bench.flow_steps("unipc", 7) == 7
