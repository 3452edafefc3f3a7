"""SADA with diffusers' model CPU offload (accelerate hooks re-applied after every call).

``enable_model_cpu_offload`` removes and re-adds its accelerate hooks at the end of each
pipeline call, restoring the forward it saw. On the CPU the offload moves nothing, but the
hook bookkeeping is the GPU's.
"""

from __future__ import annotations

import pytest
import torch

import sadakit
from sadakit.testing import pipelines as tp


@pytest.mark.parametrize("order", ["offload, then accelerate", "accelerate, then offload"])
def test_sada_survives_every_offloaded_generation_and_leaves_offload_working(order):
    pipe = tp.tiny_sd_controlnet_pipeline()
    seed = int(torch.randint(0, 2**31 - 1, ()))
    kw = {"prompt": "a red square", "num_inference_steps": 14, "height": 64, "width": 64,
          "image": tp.control_probe(3, 64, 64), "output_type": "latent"}

    def run() -> torch.Tensor:
        return pipe(generator=torch.Generator().manual_seed(seed), **kw).images

    sadakit.accelerate(pipe)
    expected = run()  # accelerated, no offload
    sadakit.remove(pipe)
    if order.startswith("offload"):
        pipe.enable_model_cpu_offload(device="cpu")
        base = run()
        sadakit.accelerate(pipe)
    else:
        base = run()
        sadakit.accelerate(pipe)
        pipe.enable_model_cpu_offload(device="cpu")
    first = run()
    report_first = sadakit.report(pipe)
    second = run()  # after the pipeline re-applied its offload hooks
    report_second = sadakit.report(pipe)
    assert report_second is not report_first and report_second.network_calls < 14
    assert torch.equal(first, expected) and torch.equal(second, expected)
    assert not torch.equal(second, base)
    assert sadakit.remove(pipe)
    for name in ("unet", "controlnet"):  # accelerate's offload wrapper is still in place
        module = getattr(pipe, name)
        assert hasattr(module, "_hf_hook") and "forward" in module.__dict__
        assert not getattr(module, "_diffusers_hook", None)
    assert torch.equal(run(), base) and torch.equal(run(), base)
