"""Built-in plugin: ControlNet pipelines for SD 1.x/2.x, SDXL and Flux.

The denoiser, parameterisation, CFG layout and token blocks are those of the base family
(``unet_common`` for the UNets, the Flux plugin's answers for Flux); this plugin adds the
control branch: ``pipe.controlnet``, which is the Multi* wrapper when several ControlNets are
given, so one hook covers all of them. The runtime calls it first each step and decides there:
on a skipped call the ControlNet is not run, on a call computed on some rows it runs on those
rows only (see ``SADASession.run_control``). Control strength
(``controlnet_conditioning_scale``) and ``control_guidance_start/end`` are arguments of the
ControlNet call that the hook passes through unchanged.
"""

from __future__ import annotations

import dataclasses

from typing import Any

import diffusers

from ...config import SADAConfig
from ...errors import UnsupportedPipelineError
from ...hookspecs import hookimpl
from ..image.flux import (
    flux_denoiser,
    flux_parameterization,
    flux_token_blocks,
)
from ...spec import ControlSpec, DenoiserSpec
from ..unet_common import cfg_pairs, unet_parameterization, unet_token_blocks
from .control import flux_control_spec, unet_control_spec
from .true_cfg_guard import install_true_cfg_guard, remove_true_cfg_guard

_FAMILIES = {
    "sd-controlnet": ("StableDiffusionControlNetPipeline",),
    "sdxl-controlnet": ("StableDiffusionXLControlNetPipeline",),
    "flux-controlnet": ("FluxControlNetPipeline",),
}
_CLASSES = {
    family: tuple(getattr(diffusers, n) for n in names if hasattr(diffusers, n)) for family, names in _FAMILIES.items()
}


def _is_flux(pipe: Any) -> bool:
    return isinstance(pipe, _CLASSES["flux-controlnet"])


@hookimpl
def sadakit_family(pipe: Any) -> str | None:
    for family, classes in _CLASSES.items():
        if isinstance(pipe, classes):
            return family
    return None


@hookimpl
def sadakit_supported_pipelines() -> list[str]:
    return [n for names in _FAMILIES.values() for n in names]


@hookimpl
def sadakit_denoiser(pipe: Any) -> DenoiserSpec:
    if _is_flux(pipe):  # true CFG is refused here (true_cfg_guard): one call per step
        return dataclasses.replace(flux_denoiser(pipe), call_stream=None)
    return DenoiserSpec(module=pipe.unet, sample_arg="sample", timestep_arg="timestep")


@hookimpl
def sadakit_parameterization(pipe: Any):
    return flux_parameterization(pipe) if _is_flux(pipe) else unet_parameterization(pipe)


@hookimpl
def sadakit_cfg_groups(pipe: Any, batch_size: int):
    return None if _is_flux(pipe) else cfg_pairs(pipe, batch_size)


@hookimpl
def sadakit_token_blocks(pipe: Any, denoiser):
    return flux_token_blocks(denoiser) if _is_flux(pipe) else unet_token_blocks(denoiser)


@hookimpl
def sadakit_control_modules(pipe: Any) -> list[ControlSpec]:
    return [flux_control_spec(pipe) if _is_flux(pipe) else unet_control_spec(pipe)]


@hookimpl
def sadakit_default_config(pipe: Any) -> SADAConfig:
    return SADAConfig()


@hookimpl
def sadakit_validate(pipe: Any, config: SADAConfig) -> None:
    if getattr(pipe, "controlnet", None) is None:
        raise UnsupportedPipelineError(
            f"{type(pipe).__name__}.controlnet is None; sadakit's ControlNet plugin needs the pipeline's ControlNet "
            "(a ControlNet model or a Multi* wrapper of several)"
        )


@hookimpl
def sadakit_prepare(pipe: Any) -> None:
    if _is_flux(pipe):
        install_true_cfg_guard(pipe, pipe.transformer)


@hookimpl
def sadakit_restore(pipe: Any) -> None:
    if _is_flux(pipe):
        remove_true_cfg_guard(pipe)
