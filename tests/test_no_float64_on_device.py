"""No float64 tensor on the model's device while sadakit generates or distils (issue 20, item 5).

Apple's MPS has no float64 (creating a float64 tensor there raises) and consumer CUDA GPUs run
it many times slower than float32. sadakit's schedule tables and AdaSDE grids are float64 on
the CPU, built at setup, and reach a device only as float32.

This machine has only a CPU, so the model's device *is* the CPU and a host table cannot be told
apart from a device tensor by its device. The test therefore separates setup from per-call work
and attributes every op to the code that called torch:

* Checked: every aten op a ``TorchDispatchMode`` sees (forward and backward, so the gradient of
  a distillation step too) whose innermost Python frame outside torch is in the ``sadakit``
  package; none may output a float64 tensor. Recorded while a generation runs (SADA on tiny
  SD, SDXL, Flux; an ``AdaSDEScheduler`` sampling run on tiny SD and Flux) and during a short
  AdaSDE distillation from the first model call on (teacher, student rollout, loss, backward,
  Adam step).
* Not checked: setup (``sadakit.accelerate``, building the scheduler, the distillation adapter
  and grids: float64 on the CPU by design); ops called from diffusers or torch themselves
  (diffusers' Flux rotary embedding computes in float64 on every device but MPS/NPU/Neuron, and its
  schedulers use numpy); numpy; the coefficient file's own checks in
  ``sadakit/adasde/coefficients.py`` (the grid there is a CPU tensor by construction, checked
  once per file, at the end of a distillation).
"""

from __future__ import annotations

import math
import os
import sys
from collections import Counter
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

import sadakit
from sadakit.adasde import AdaSDEScheduler, CoefficientFile, CoefficientMetadata, DistillConfig
from sadakit.adasde.chart import ModelChart, alphas_cumprod_from_config
from sadakit.adasde.distill import distill
from sadakit.adasde.pipeline_denoiser import FLOW_SIGMA_RANGE, pipeline_denoiser
from sadakit.core.adasde import init_raw_coefficients, make_sigmas
from sadakit.core.parameterization import vp_log_sigma
from sadakit.testing import pipelines as tp

SADAKIT = os.path.dirname(os.path.abspath(sadakit.__file__)) + os.sep
TORCH = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep
FILE_CHECKS = os.path.join(SADAKIT, "adasde", "coefficients.py")
PROMPTS = ["a red circle", "a blue square"]


def _caller() -> Any:
    """The innermost frame outside torch (and outside this mode): the code that asked for the op."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename.startswith(TORCH):
        frame = frame.f_back
    return frame


class Float64Recorder(TorchDispatchMode):
    """Counts the ops sadakit calls and those of them that output a float64 tensor, by call site."""

    def __init__(self, armed: bool = True) -> None:
        super().__init__()
        self.armed = armed
        self.sadakit_ops = 0
        self.float64: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self.armed:
            frame = _caller()
            path = frame.f_code.co_filename if frame is not None else ""
            if path.startswith(SADAKIT) and path != FILE_CHECKS:
                self.sadakit_ops += 1
                if any(isinstance(t, torch.Tensor) and t.dtype == torch.float64 for t in pytree.tree_leaves(out)):
                    site = f"{os.path.relpath(path, os.path.dirname(SADAKIT))}:{frame.f_lineno} {frame.f_code.co_name}"
                    self.float64[f"{func} at {site}"] += 1
        return out

    def check(self) -> None:
        assert self.sadakit_ops > 0, "no sadakit op was seen: the recorder checked nothing"
        assert not self.float64, "float64 outputs from sadakit per-call code:\n" + "\n".join(
            f"  {n} x {op}" for op, n in self.float64.most_common()
        )


def _pipeline(kind: str) -> tuple[Any, dict[str, Any]]:
    if kind == "sd":
        return tp.tiny_sd_pipeline(), {"height": 64, "width": 64}
    if kind == "sdxl":
        return tp.tiny_sdxl_pipeline(), {"height": 64, "width": 48}
    return tp.tiny_flux_pipeline(), {"height": 64, "width": 64, "max_sequence_length": 32}


def _generate(pipe: Any, steps: int, kw: dict[str, Any], **extra: Any) -> torch.Tensor:
    out = pipe(prompt=PROMPTS, num_inference_steps=steps, output_type="latent",
               generator=torch.Generator().manual_seed(0), **kw, **extra)
    return out.images


@pytest.mark.parametrize(
    "kind, config",
    [
        ("sd", None),  # whole calls skipped (late phase)
        ("sdxl", sadakit.SADAConfig(skip_steps=False, max_token_fraction=1.0)),  # partial token calls
        ("flux", None),
        ("flux", sadakit.SADAConfig(skip_steps=False, max_token_fraction=1.0)),
    ],
    ids=["sd", "sdxl-tokens", "flux", "flux-tokens"],
)
def test_sada_generation_creates_no_float64(kind, config):
    pipe, kw = _pipeline(kind)
    sadakit.accelerate(pipe, config)
    with Float64Recorder() as rec:
        out = _generate(pipe, 20, kw)
    rep = sadakit.report(pipe)
    assert torch.isfinite(out).all()
    assert rep.skipped_calls + rep.partial_calls > 0, rep.decisions  # the accelerated path ran
    rec.check()


@pytest.mark.parametrize("kind", ["sd", "flux"])
def test_adasde_sampling_creates_no_float64(kind):
    pipe, kw = _pipeline(kind)
    flow = kind == "flux"
    steps = 3
    nfe = 2 * steps if flow else 2 * steps - 1
    smin, smax = FLOW_SIGMA_RANGE if flow else (0.03, 14.0)
    raw = init_raw_coefficients(steps, 0.2) + 0.3 * torch.randn((steps, 4), generator=torch.Generator().manual_seed(1))
    meta = CoefficientMetadata(model="tiny", nfe=nfe, analytic_first_step=not flow, sigma_min=smin, sigma_max=smax,
                               prediction_type="flow" if flow else "epsilon", guidance_scale=3.0)
    cf = CoefficientFile(raw, make_sigmas(steps, smin, smax), meta)
    pipe.scheduler = AdaSDEScheduler.from_coefficients(cf, pipe.scheduler)
    with Float64Recorder() as rec:
        out = _generate(pipe, nfe, kw, guidance_scale=3.0)
    assert torch.isfinite(out).all() and pipe.scheduler.nfe == nfe
    rec.check()


@pytest.mark.parametrize("kind", ["sd", "flux"])
def test_adasde_distillation_creates_no_float64(kind):
    """From the first model call on: everything before (capture, grids) is setup."""
    pipe, kw = _pipeline(kind)
    flow = kind == "flux"
    adapter = pipeline_denoiser(pipe, PROMPTS, guidance_scale=3.0, **kw)
    lo, hi = adapter.sigma_range
    config = DistillConfig(nfe=6 if flow else 5, analytic_first_step=not flow, iterations=2, batch_size=2,
                           teacher_factor=2, sigma_min=max(lo, 1e-4), sigma_max=hi)
    rec = Float64Recorder(armed=False)
    arm = adapter.module.register_forward_pre_hook(lambda *_: setattr(rec, "armed", True))
    try:
        with rec, adapter.frozen():
            res = distill(adapter, adapter.sample_noise, config, model="tiny", prediction_type=adapter.prediction_type,
                          guidance_scale=3.0, progress=False)
    finally:
        arm.remove()
    assert len(res.losses) == 2 and all(math.isfinite(v) for v in res.losses)
    assert res.coefficients.sigmas.dtype == torch.float64  # the file's grid stays float64 (on the host)
    rec.check()


@pytest.mark.parametrize(
    "config",
    [{}, {"rescale_betas_zero_snr": True}, {"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02},
     {"beta_schedule": "squaredcos_cap_v2"}],
    ids=["scaled_linear", "zero-snr", "linear", "cosine"],
)
def test_float32_timestep_map_agrees_with_float64(config):
    """The chart's sigma -> timestep map in float32 against the float64 map on the same float32 sigmas.

    Measured (SD's scaled_linear): values 7e-5 absolute at most (one float32 ulp near t = 900),
    < 1.5e-6 relative from t = 1 on; slope ~1.2e-7 relative.
    """
    ab = alphas_cumprod_from_config(**config)
    chart = ModelChart(False, "epsilon", ab)
    table = vp_log_sigma(ab)
    lo, hi = math.exp(float(table[0])), math.exp(float(table[-1]))
    sigma = torch.exp(torch.linspace(math.log(lo), math.log(hi), 20001, dtype=torch.float64)).to(torch.float32)

    def reference(s: torch.Tensor) -> torch.Tensor:
        log_s = torch.log(s.to(torch.float64)).clamp(table[0], table[-1])
        up = torch.searchsorted(table, log_s.detach()).clamp(1, len(table) - 1)
        return (up - 1).to(torch.float64) + (log_s - table[up - 1]) / (table[up] - table[up - 1])

    s32, s64 = sigma.clone().requires_grad_(True), sigma.clone().requires_grad_(True)
    got, want = chart.timestep_tensor(s32), reference(s64)
    assert got.dtype == torch.float32
    err = (got.detach().double() - want.detach()).abs()
    assert float(err.max()) < 1e-4
    big = want.detach() >= 1.0
    assert float((err[big] / want.detach()[big]).max()) < 1e-5
    got.sum().backward()
    want.sum().backward()
    inside = (sigma > lo * 1.001) & (sigma < hi * 0.999)  # away from the clamped ends
    slope_err = (s32.grad.double() - s64.grad).abs() / s64.grad.abs()
    assert float(slope_err[inside].max()) < 1e-5
    # the host map the scheduler uses gives the same timesteps
    probe = sigma[::1000].tolist()
    np.testing.assert_allclose(chart.timestep_tensor(torch.tensor(probe)).numpy(),
                               [chart.timestep(s) for s in probe], rtol=1e-5, atol=1e-4)


def test_log_sigma_table_is_built_once_per_schedule_tensor():
    """SADA rebuilds its parameterisation every generation: the float64 table must not be rebuilt."""
    from sadakit.core.parameterization import VPParameterization, log_sigma_table

    ab = alphas_cumprod_from_config().to(torch.float32)
    first = log_sigma_table(ab)
    assert log_sigma_table(ab) is first
    assert VPParameterization(ab)._log_sigma_on(torch.device("cpu")) is first.on("cpu")
    torch.testing.assert_close(first.on("cpu"), vp_log_sigma(ab).to(torch.float32), rtol=0, atol=0)
    ab[10:] = ab[10:] * 0.5  # an in-place change is a new schedule
    assert log_sigma_table(ab) is not first
