"""sadakit plugin for the analytic testbed's ``GMMPipeline``: the worked third-party example.

It answers the contract's questions (``sadakit.hookspecs``) exactly as an external package
would, and registers the same way: through the ``sadakit`` entry-point group
(``testbed = "sadakit.testbeds.plugin"`` in ``pyproject.toml``) or, until that entry is
installed, ``sadakit.registry.register_plugin`` (``register()`` below, which ``GMMPipeline``
calls on construction, idempotently).

The denoiser is ``pipe.denoiser``; its language decides the parameterisation:

* ``GMMEpsModel``: eps-prediction on its VP ``alphas_cumprod`` (DDPM-index timesteps,
  fractional allowed) -> ``VPParameterization``;
* ``GMMFlowModel``: velocity, t in [0, 1] as Flux receives it -> ``FlowParameterization(1)``;
* ``GMMTrigVModel``: v-prediction with alpha = cos(pi t / 2) (iPNDM) -> ``TrigVParameterization``.

There are no attention blocks, so no token-wise sparsity; every row of a batch is an
independent sample (no CFG).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..config import SADAConfig
from ..core.parameterization import FlowParameterization, NoiseLevel, Parameterization, VPParameterization, _as_time
from ..errors import UnsupportedPipelineError
from ..hookspecs import hookimpl
from ..spec import DenoiserSpec
from .pipeline import GMMEpsModel, GMMFlowModel, GMMPipeline, GMMTrigVModel

FAMILY = "gmm-testbed"
PLUGIN_NAME = "sadakit.testbeds.plugin"


class TrigVParameterization(Parameterization):
    """v-prediction on the trigonometric VP schedule alpha = cos(pi t / 2), sigma = sin(pi t / 2)."""

    prediction_type = "v_prediction"

    def level(self, timestep, device):
        angle = _as_time(timestep, device).clamp(0.0, 1.0) * (math.pi / 2)
        a, s = angle.cos().clamp_min(0.0), angle.sin()
        denom = a + s
        return NoiseLevel(tau=s / denom, in_scale=1.0 / denom, a=a, s=s)

    def x0_from_output(self, x_model, output, lvl):
        return lvl.a * x_model - lvl.s * output

    def output_from_x0(self, x_model, x0, lvl):
        eps = (x_model - lvl.a * x0) / lvl.s.clamp_min(1e-8)
        return lvl.a * eps - lvl.s * x0


def _is_flow_scheduler(scheduler: Any) -> bool:
    cfg = getattr(scheduler, "config", {})
    return "FlowMatch" in type(scheduler).__name__ or bool(cfg.get("use_flow_sigmas", False))


def data_to_grid(m: torch.Tensor, arguments: dict[str, Any]) -> torch.Tensor:
    """Per-element map -> (B, H, W): mean over channels for (B, C, H, W) latents; flat data
    (B, d) is a 1 x d strip; (B, C, L) sequences are 1 x L after the channel mean."""
    if m.dim() == 4:
        return m.mean(dim=1)
    if m.dim() == 3:
        return m.mean(dim=1).unsqueeze(1)
    return m.reshape(m.shape[0], 1, -1)


@hookimpl
def sadakit_family(pipe: Any) -> str | None:
    return FAMILY if isinstance(pipe, GMMPipeline) else None


@hookimpl
def sadakit_supported_pipelines() -> list[str]:
    return ["GMMPipeline"]


@hookimpl
def sadakit_denoiser(pipe: Any) -> DenoiserSpec:
    return DenoiserSpec(
        module=pipe.denoiser,
        sample_arg=pipe.denoiser.sample_arg,
        timestep_arg="timestep",
        latent_to_grid=data_to_grid,
        output_field="sample",
    )


@hookimpl
def sadakit_parameterization(pipe: Any) -> Parameterization:
    model, sched = pipe.denoiser, pipe.scheduler
    flow_sched = _is_flow_scheduler(sched)
    if isinstance(model, GMMFlowModel):
        if not flow_sched:
            raise UnsupportedPipelineError(
                f"GMMPipeline: the flow-matching denoiser needs a flow-matching scheduler, got {type(sched).__name__}"
            )
        return FlowParameterization(timestep_scale=1.0)
    if flow_sched:
        raise UnsupportedPipelineError(
            f"GMMPipeline: {type(model).__name__} is not a flow-matching model but the scheduler is {type(sched).__name__}"
        )
    if isinstance(model, GMMTrigVModel):
        return TrigVParameterization()
    if isinstance(model, GMMEpsModel):
        return VPParameterization(model.alphas_cumprod, prediction_type="epsilon")
    raise UnsupportedPipelineError(f"GMMPipeline: unknown denoiser type {type(model).__name__}")


@hookimpl
def sadakit_cfg_groups(pipe: Any, batch_size: int) -> list[list[int]] | None:
    return None


@hookimpl
def sadakit_token_blocks(pipe: Any, denoiser: torch.nn.Module) -> list:
    return []


@hookimpl
def sadakit_control_modules(pipe: Any) -> list:
    return []


@hookimpl
def sadakit_default_config(pipe: Any) -> SADAConfig:
    """Step skipping only: the analytic denoiser has no blocks to prune tokens in."""
    return SADAConfig(token_sparsity=False, count_flops=False)


@hookimpl
def sadakit_validate(pipe: Any, config: SADAConfig) -> None:
    sadakit_parameterization(pipe)  # refuses mismatched model / scheduler languages
    return None


def register() -> None:
    """Register this module with sadakit's plugin manager unless it already is (idempotent)."""
    import sys

    from ..registry import plugin_manager

    module = sys.modules[__name__]
    pm = plugin_manager()
    if not pm.is_registered(module):
        pm.register(module, name=PLUGIN_NAME)
