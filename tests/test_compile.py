"""SADA under ``torch.compile``: decisions stay out of the compiled graph.

dynamo's ``eager`` backend traces exactly as inductor would (same graph breaks, guards and
recompiles) without code generation, so these checks take seconds.
"""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

import sadakit
from sadakit.testing import pipelines as tp


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def _case(kind: str):
    """(pipeline, the modules to compile, call kwargs)."""
    if kind == "sd":
        return tp.tiny_sd_pipeline(), ["unet"], {"height": 64, "width": 64}
    if kind == "sd-controlnet":  # the control branch follows the denoiser's decision
        return tp.tiny_sd_controlnet_pipeline(), ["unet", "controlnet"], {
            "height": 64, "width": 64, "image": tp.control_probe(3, 64, 64)}
    return tp.tiny_flux_pipeline(), ["transformer"], {"height": 64, "width": 64, "max_sequence_length": 32}


@pytest.mark.parametrize(("kind", "config", "how"), [
    ("sd", None, "in place"),  # step skipping
    ("sd-controlnet", None, "in place"),
    ("sd-controlnet", None, "wrapper, before accelerate"),  # pipe.unet = torch.compile(pipe.unet)
    ("flux", sadakit.SADAConfig(skip_steps=False, max_token_fraction=1.0), "in place"),  # partial token calls
])
def test_compiled_denoiser_gives_the_eager_result_and_compiles_once(kind, config, how):
    pipe, modules, kw = _case(kind)
    seed = int(torch.randint(0, 2**31 - 1, ()))
    kw = {**kw, "prompt": ["a red square", "a blue circle"], "num_inference_steps": 16, "output_type": "latent"}

    def run():
        return pipe(generator=torch.Generator().manual_seed(seed), **kw).images

    base = run()
    sadakit.accelerate(pipe, config)
    eager = run()
    decisions = sadakit.report(pipe).decisions
    assert set(decisions) > {"F"}, decisions  # something was skipped or pruned
    if how == "in place":
        for name in modules:
            getattr(pipe, name).compile(backend="eager")
    else:
        sadakit.remove(pipe)
        for name in modules:
            setattr(pipe, name, torch.compile(getattr(pipe, name), backend="eager"))
        sadakit.accelerate(pipe, config)
    first = run()
    assert sadakit.report(pipe).decisions == decisions
    graphs = counters["stats"]["unique_graphs"]
    assert graphs > 0  # the network was compiled
    second = run()
    # a second generation reuses every graph: no guard depends on the session's decisions
    assert counters["stats"]["unique_graphs"] == graphs
    assert torch.equal(first, eager) and torch.equal(second, eager)
    sadakit.remove(pipe)
    assert torch.equal(run(), base)
