"""Answers shared by every plugin whose denoiser is a diffusers UNet on a VP/EDM schedule.

Plugins (image, audio, ControlNet) depend on the core and on diffusers; this module holds
what they have in common so each plugin stays a short list of answers.
"""

from __future__ import annotations

from typing import Any

import torch

from ..core.parameterization import EDMParameterization, Parameterization, VPParameterization
from ..errors import UnsupportedPipelineError
from ..spec import TokenBlockSpec


def unet_parameterization(pipe: Any) -> Parameterization:
    """The parameterisation a UNet pipeline's current scheduler implies."""
    sched = pipe.scheduler
    cfg = sched.config
    prediction = cfg.get("prediction_type", "epsilon")
    name = type(sched).__name__
    if name.startswith("EDM"):
        return EDMParameterization(sigma_data=cfg.get("sigma_data", 0.5), prediction_type=prediction)
    if "FlowMatch" in name:
        raise UnsupportedPipelineError(
            f"{type(pipe).__name__}: scheduler {name} is a flow-matching scheduler, but this pipeline's UNet "
            "is a variance-preserving model; use a DDPM-family scheduler (Euler, DPM-Solver++, DDIM, UniPC, ...)"
        )
    if prediction not in ("epsilon", "v_prediction", "sample"):
        raise UnsupportedPipelineError(
            f"{type(pipe).__name__}: scheduler prediction_type={prediction!r} is not supported; "
            "allowed: 'epsilon', 'v_prediction', 'sample'"
        )
    alphas = getattr(sched, "alphas_cumprod", None)
    if alphas is None:
        raise UnsupportedPipelineError(
            f"{type(pipe).__name__}: scheduler {name} exposes no alphas_cumprod, so sadakit cannot map its "
            "timesteps to noise levels; use a DDPM-family or EDM scheduler"
        )
    continuous = cfg.get("timestep_type", "discrete") == "continuous" and prediction == "v_prediction"
    return VPParameterization(torch.as_tensor(alphas), prediction, continuous_log_sigma=continuous)


def cfg_pairs(pipe: Any, batch_size: int) -> list[list[int]] | None:
    """diffusers concatenates [uncond, cond]: row i and row i + B/2 belong to one prompt."""
    try:
        cfg_on = bool(pipe.do_classifier_free_guidance)
    except AttributeError:  # property reads attributes set only during __call__
        cfg_on = False
    if not cfg_on or batch_size % 2:
        return None
    half = batch_size // 2
    return [[i, i + half] for i in range(half)]


def unet_token_blocks(unet: torch.nn.Module) -> list[TokenBlockSpec]:
    """Every BasicTransformerBlock inside the UNet's Transformer2DModels (row-major token grids)."""
    from diffusers.models.attention import BasicTransformerBlock

    return [
        TokenBlockSpec(module=module, name=name, layout="halved")
        for name, module in unet.named_modules()
        if isinstance(module, BasicTransformerBlock)
    ]
