"""SADA under ``torch.compile``: decisions stay out of the compiled graph.

dynamo's ``eager`` backend traces exactly as inductor would (same graph breaks, guards and
recompiles) without code generation, so these checks take seconds.
"""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

import sadakit
from sadakit.runtime.entry import NetworkDoor
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


@pytest.mark.parametrize(("kind", "config", "how"), [  # without fullgraph (fullgraph: below)
    # pipe.unet = torch.compile(pipe.unet); slow: the fullgraph test below compiles SD-ControlNet too
    pytest.param("sd-controlnet", None, "wrapper, before accelerate", marks=pytest.mark.slow),
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


class _CountingBackend:
    """dynamo's eager backend, counting how many compiled graphs each network call runs."""

    def __init__(self) -> None:
        self.graphs = 0
        self.runs = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1

        def run(*args):
            self.runs += 1
            return gm.forward(*args)

        return run


@pytest.mark.parametrize(("kind", "config", "how"), [
    pytest.param("sd", None, "in place", marks=pytest.mark.slow),  # slow: sdxl compiles the same UNet blocks
    ("sdxl", None, "in place"),
    ("sd-controlnet", None, "wrapper, after accelerate"),  # pipe.unet = torch.compile(pipe.unet, ...)
    ("flux", None, "in place"),
    ("flux", sadakit.SADAConfig(skip_steps=False, max_token_fraction=1.0), "in place"),  # partial token calls
])
def test_fullgraph_compile_gives_the_eager_result_in_one_graph_per_call(kind, config, how):
    if kind == "sdxl":
        pipe, modules, kw = tp.tiny_sdxl_pipeline(), ["unet"], {"height": 64, "width": 64}
    else:
        pipe, modules, kw = _case(kind)
    seed = int(torch.randint(0, 2**31 - 1, ()))
    kw = {**kw, "prompt": ["a red square", "a blue circle"], "num_inference_steps": 16, "output_type": "latent"}

    def run():
        return pipe(generator=torch.Generator().manual_seed(seed), **kw).images

    base = run()
    sadakit.accelerate(pipe, config)
    eager = run()
    decisions = sadakit.report(pipe).decisions
    assert set(decisions) > {"F"}, decisions
    backend = _CountingBackend()
    originals = {name: getattr(pipe, name) for name in modules}
    for name in modules:
        if how == "in place":
            getattr(pipe, name).compile(backend=backend, fullgraph=True)
        else:
            setattr(pipe, name, torch.compile(getattr(pipe, name), backend=backend, fullgraph=True))
    first = run()  # fullgraph=True: any graph break would raise here
    report = sadakit.report(pipe)
    assert report.decisions == decisions and torch.equal(first, eager)
    # every network call is one graph (the shape's FLOP-measured eager call was before compiling)
    assert backend.runs == len(modules) * report.network_calls
    # one graph per kind of call (full; partial token calls), whatever the number of calls
    assert backend.graphs <= len(modules) * (2 if "P" in decisions else 1), backend.graphs
    graphs, runs = backend.graphs, backend.runs
    second = run()
    assert torch.equal(second, eager) and backend.graphs == graphs  # no recompile in the next generation
    assert backend.runs - runs == len(modules) * sadakit.report(pipe).network_calls
    compiled = {name: getattr(pipe, name) for name in modules}
    sadakit.remove(pipe)
    for name, module in originals.items():  # each slot holds what the user put there again
        slot = compiled[name]._compiled_call_impl
        assert not isinstance(slot, NetworkDoor)
        assert (slot is not None) if how == "in place" else (slot is None and module._compiled_call_impl is None)
    assert torch.equal(run(), base)  # the user's compiled network, plain


def test_compile_repeated_blocks_fullgraph_with_token_block_hooks():
    """diffusers' regional compile (each Flux block compiled on its own) under ``fullgraph=True``:
    the blocks' token hooks trace; a shape's first call runs them eagerly (force_eager stance)."""
    pipe, _, kw = _case("flux")
    seed = int(torch.randint(0, 2**31 - 1, ()))
    kw = {**kw, "prompt": ["a red square", "a blue circle"], "num_inference_steps": 16, "output_type": "latent"}

    def run():
        return pipe(generator=torch.Generator().manual_seed(seed), **kw).images

    # without FLOP counting the first call is not under the flop counter's dispatch mode (which
    # keeps dynamo away by itself): the force_eager stance has to
    config = sadakit.SADAConfig(skip_steps=False, max_token_fraction=1.0, count_flops=False)
    sadakit.accelerate(pipe, config)
    eager = run()
    decisions = sadakit.report(pipe).decisions
    assert "P" in decisions, decisions
    sadakit.remove(pipe)
    pipe.transformer.compile_repeated_blocks(fullgraph=True, backend="eager")
    sadakit.accelerate(pipe, config)  # the first call of the shape is eager again: a new session
    first = run()
    assert sadakit.report(pipe).decisions == decisions and torch.equal(first, eager)
    graphs = counters["stats"]["unique_graphs"]
    assert torch.equal(run(), eager) and counters["stats"]["unique_graphs"] == graphs
