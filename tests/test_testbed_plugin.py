"""The testbed's sadakit plugin: found by the registry, speaks each model's language, and SADA
runs on GMMPipeline through it and is removed exactly."""

from __future__ import annotations

import pytest
import torch

from sadakit.errors import UnsupportedPipelineError
from sadakit.registry import find_plugin
from sadakit.testbeds.configs import get_testbed
from sadakit.testbeds.pipeline import GMMEpsModel, GMMPipeline
from sadakit.testbeds.plugin import FAMILY
from sadakit.testbeds.solvers import SOLVERS, make_pipeline


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("solver", ["euler", "dpm++2m", "flow-euler", "ipndm"])
def test_parameterization_inverts_the_models_output(solver):
    """x0 recovered by the plugin's parameterisation from the model's output = the exact D."""
    pipe = make_pipeline("gmm64-16", solver)
    handle = find_plugin(pipe)
    assert handle.family == FAMILY
    param = handle.parameterization(pipe)
    pipe.scheduler.set_timesteps(10)
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ()).item()))
    x = torch.randn(4, 64, generator=g)
    scale = pipe.denoiser.pipeline_timestep_scale
    for t in pipe.scheduler.timesteps[1:]:
        t_model = t * scale
        out = pipe.denoiser(x, t_model, return_dict=False)[0]
        lvl = param.level(t_model, x.device)
        x0 = param.x0_from_output(x, out, lvl)
        x_flow, tau, a = pipe.denoiser.flow_state(x, t_model)
        exact = pipe.testbed.denoiser.denoise_flow(x_flow, tau, a).float()
        assert torch.allclose(x0, exact, atol=2e-4 * (1 + float(x0.abs().max()))), float(t)
        assert torch.allclose(param.output_from_x0(x, x0, lvl), out, rtol=1e-3, atol=1e-3)


def test_mismatched_scheduler_is_refused():
    tb = get_testbed("gmm2d-8")
    pipe = GMMPipeline(GMMEpsModel(tb), SOLVERS["flow-euler"].make())
    with pytest.raises(UnsupportedPipelineError, match="flow-matching"):
        find_plugin(pipe).parameterization(pipe)


def test_sada_runs_on_the_testbed_and_is_removed_exactly():
    from sadakit import api

    pipe = make_pipeline("gmm64-16", "flow-euler")
    z = torch.randn(16, 64, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    base = pipe(num_inference_steps=20, latents=z)
    api.accelerate(pipe)
    try:
        fast = pipe(num_inference_steps=20, latents=z)
    finally:
        api.remove(pipe)
    again = pipe(num_inference_steps=20, latents=z)
    assert fast.calls == 20 and fast.nfe < 20  # skipped calls never reach forward
    assert torch.isfinite(fast.samples).all()
    assert torch.equal(again.samples, base.samples) and again.nfe == 20
