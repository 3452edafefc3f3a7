"""Built-in plugin: Wan 2.1 text-to-video (``WanPipeline``), a video DiT on a flow schedule.

The denoiser is ``pipe.transformer`` (``WanTransformer3DModel``). Its latent is
(B, C, F, H, W); the transformer patchifies it by ``config.patch_size`` (p_t, p_h, p_w) into
(F / p_t) x (H / p_h) x (W / p_w) tokens, frame-major then row-major, and every block sees all
of them (``layout="exact"`` on that three-axis grid). It receives ``1000 * sigma`` as its
timestep (the UniPC / flow-match schedulers' flow timesteps), so the parameterisation is
flow matching with ``timestep_scale=1e-3``.

With CFG the pipeline calls the transformer twice per step, inside diffusers'
``cache_context("cond")`` and ``("uncond")``: the runtime keeps one call stream per branch and
decides both together; nothing here has to say so.

Blocks are called as ``block(hidden_states, encoder_hidden_states, temb, rotary_emb)``, all
positional. The rotary table ``(cos, sin)``, each (1, N, 1, D), is indexed by token, and so is
``temb`` where it carries one modulation per token (Wan 2.2 TI2V: (B, N, 6, C); Wan 2.1's
(B, 6, C) is left alone by the size rule of :class:`sadakit.TokenArg`).
"""

from __future__ import annotations

from typing import Any

import diffusers
import torch
import torch.nn.functional as F

from ...config import SADAConfig
from ...core.parameterization import FlowParameterization
from ...errors import UnsupportedPipelineError
from ...hookspecs import hookimpl
from ...spec import DenoiserSpec, TokenArg, TokenBlockSpec

_WAN = ("WanPipeline",)
_WAN_CLASSES = tuple(getattr(diffusers, n) for n in _WAN if hasattr(diffusers, n))

WAN_TOKEN_ARGS = {"rotary_emb": TokenArg(dim=1), "temb": TokenArg(dim=1)}


def _patch_size(pipe: Any) -> tuple[int, int, int]:
    return tuple(int(p) for p in pipe.transformer.config.patch_size)


def wan_latent_to_grid(patch_size: tuple[int, int, int]):
    """(B, C, F, H, W) per-element map -> (B, F/p_t, H/p_h, W/p_w): the transformer's token grid."""

    def to_grid(m: torch.Tensor, arguments: dict[str, Any]) -> torch.Tensor:
        per_element = m.mean(dim=1)
        if patch_size == (1, 1, 1):
            return per_element
        return F.avg_pool3d(per_element.unsqueeze(1), kernel_size=patch_size, stride=patch_size).squeeze(1)

    return to_grid


def wan_parameterization(pipe: Any) -> FlowParameterization:
    sched = pipe.scheduler
    name = type(sched).__name__
    cfg = sched.config
    flow = "FlowMatch" in name or (bool(cfg.get("use_flow_sigmas")) and cfg.get("prediction_type") == "flow_prediction")
    if not flow:
        raise UnsupportedPipelineError(
            f"{type(pipe).__name__}: scheduler {name} is not a flow-matching scheduler, but Wan predicts a velocity "
            "on a flow schedule; use UniPCMultistepScheduler(prediction_type='flow_prediction', use_flow_sigmas=True) "
            "(the pipeline's own) or FlowMatchEulerDiscreteScheduler"
        )
    return FlowParameterization(timestep_scale=1e-3)


def wan_token_blocks(transformer: torch.nn.Module) -> list[TokenBlockSpec]:
    from diffusers.models.transformers.transformer_wan import WanTransformerBlock

    return [
        TokenBlockSpec(module=module, name=name, layout="exact", token_args=WAN_TOKEN_ARGS)
        for name, module in transformer.named_modules()
        if isinstance(module, WanTransformerBlock)
    ]


@hookimpl
def sadakit_family(pipe: Any) -> str | None:
    return "wan" if _WAN_CLASSES and type(pipe) in _WAN_CLASSES else None


@hookimpl
def sadakit_supported_pipelines() -> list[str]:
    return list(_WAN)


@hookimpl
def sadakit_denoiser(pipe: Any) -> DenoiserSpec:
    return DenoiserSpec(
        module=pipe.transformer,
        sample_arg="hidden_states",
        timestep_arg="timestep",
        latent_to_grid=wan_latent_to_grid(_patch_size(pipe)),
        output_field="sample",
    )


@hookimpl
def sadakit_parameterization(pipe: Any) -> FlowParameterization:
    return wan_parameterization(pipe)


@hookimpl
def sadakit_cfg_groups(pipe: Any, batch_size: int):
    return None  # one CFG branch per call; the branches are call streams


@hookimpl
def sadakit_token_blocks(pipe: Any, denoiser: torch.nn.Module) -> list[TokenBlockSpec]:
    return wan_token_blocks(denoiser)


@hookimpl
def sadakit_default_config(pipe: Any) -> SADAConfig:
    return SADAConfig()


@hookimpl
def sadakit_validate(pipe: Any, config: SADAConfig) -> None:
    if getattr(pipe, "transformer_2", None) is not None:
        raise UnsupportedPipelineError(
            f"{type(pipe).__name__} has a second transformer (Wan 2.2's low-noise expert, transformer_2): sadakit "
            "would accelerate only the high-noise steps and leave the expert switch unseen, so it refuses; "
            "Wan 2.1 and single-expert Wan 2.2 (TI2V-5B) pipelines are supported"
        )
