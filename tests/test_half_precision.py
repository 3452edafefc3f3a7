"""SADA on half-precision pipelines (what GPU users run), checked on the CPU.

The criterion, extrapolation and conversions run in float32 whatever the model dtype; the
outputs go back to the pipeline in its own dtype. Half-precision kernels on the CPU are not
the GPU's, so this checks sadakit's dtype handling, not a GPU's numerics.
"""

from __future__ import annotations

import pytest
import torch

import sadakit
from sadakit.audio_io import pipeline_sample_rate
from sadakit.metrics.audio import log_mel_psnr
from sadakit.metrics.image import psnr
from sadakit.plugins.audio import fix_musicldm
from sadakit.testing import pipelines as tp

PARTIAL_TOKENS = sadakit.SADAConfig(skip_steps=False, max_token_fraction=1.0)


def _case(kind: str):
    if kind == "sdxl":
        return tp.tiny_sdxl_pipeline(), {"height": 64, "width": 64, "output_type": "pt"}, "images"
    if kind == "flux":
        return tp.tiny_flux_pipeline(), {"height": 64, "width": 64, "max_sequence_length": 32, "output_type": "pt"}, "images"
    pipe = tp.tiny_musicldm_pipeline()
    fix_musicldm(pipe)
    return pipe, {"audio_length_in_s": 0.64, "output_type": "pt"}, "audios"


@pytest.mark.parametrize(("kind", "config", "dtype"), [
    pytest.param(kind, config, dtype, id=f"{kind}-{str(dtype).removeprefix('torch.')}",
                 # slow: MusicLDM in float16 on CPU, ~20 s (bfloat16 covers its half-precision path)
                 marks=pytest.mark.slow if (kind, dtype) == ("musicldm", torch.float16) else ())
    for kind, config in (("sdxl", None), ("flux", PARTIAL_TOKENS), ("musicldm", None))
    for dtype in (torch.bfloat16, torch.float16)])
def test_half_precision_pipeline(kind, config, dtype):
    pipe, kw, field = _case(kind)
    seed = int(torch.randint(0, 2**31 - 1, ()))

    def run() -> torch.Tensor:
        out = pipe(prompt=["a red square", "a blue circle"], num_inference_steps=16,
                   generator=torch.Generator().manual_seed(seed), **kw)
        return torch.as_tensor(getattr(out, field)).float()

    sadakit.accelerate(pipe, config)
    run()
    reference_decisions = sadakit.report(pipe).decisions  # float32
    sadakit.remove(pipe)
    pipe.to(dtype=dtype)
    base = run()
    sadakit.accelerate(pipe, config)
    accelerated = run()
    rep = sadakit.report(pipe)
    sadakit.remove(pipe)
    assert torch.equal(run(), base)  # removal restores the half-precision pipeline exactly
    assert torch.isfinite(accelerated).all()
    assert set(rep.decisions) > {"F"}, rep.decisions  # the criterion still skips or prunes
    # rounding may flip a borderline call, not the schedule
    assert sum(a != b for a, b in zip(rep.decisions, reference_decisions)) <= 2, (rep.decisions, reference_decisions)
    if field == "images":
        assert psnr(accelerated, base) > 35.0
    else:
        rate = pipeline_sample_rate(pipe)
        assert log_mel_psnr(accelerated, base, rate) > 35.0
