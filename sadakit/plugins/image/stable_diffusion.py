"""Built-in plugin: Stable Diffusion 1.x / 2.x (eps and v-prediction) and SDXL pipelines."""

from __future__ import annotations

from typing import Any

import diffusers

from ...config import SADAConfig
from ...errors import UnsupportedPipelineError
from ...hookspecs import hookimpl
from ...spec import DenoiserSpec
from ..unet_common import cfg_pairs, unet_parameterization, unet_token_blocks

_SD = (
    "StableDiffusionPipeline",
    "StableDiffusionImg2ImgPipeline",
    "StableDiffusionInpaintPipeline",
)
_SDXL = (
    "StableDiffusionXLPipeline",
    "StableDiffusionXLImg2ImgPipeline",
    "StableDiffusionXLInpaintPipeline",
)


def _classes(names: tuple[str, ...]) -> tuple[type, ...]:
    return tuple(getattr(diffusers, n) for n in names if hasattr(diffusers, n))


_SD_CLASSES = _classes(_SD)
_SDXL_CLASSES = _classes(_SDXL)


@hookimpl
def sadakit_family(pipe: Any) -> str | None:
    # exact class match: a ControlNet pipeline (other plugin) is not a subclass, but user
    # subclasses of these classes are accepted through isinstance.
    if isinstance(pipe, _SDXL_CLASSES):
        return "sdxl"
    if isinstance(pipe, _SD_CLASSES):
        return "sd"
    if _is_unet_controlnet_pipeline(pipe):
        # reached only when the ControlNet plugin (asked first) is unavailable: claimed here so
        # that sadakit_validate can say so instead of a generic "unsupported pipeline"
        return "controlnet-unserved"
    return None


def _is_unet_controlnet_pipeline(pipe: Any) -> bool:
    name = type(pipe).__name__
    return name.startswith("StableDiffusion") and "ControlNet" in name and hasattr(pipe, "unet")


@hookimpl
def sadakit_validate(pipe: Any, config: SADAConfig) -> None:
    """The UNet-only path cannot serve a pipeline with a ControlNet: the control branch would run
    on every call and its residuals would not follow skipped or partial calls."""
    if _is_unet_controlnet_pipeline(pipe) or getattr(pipe, "controlnet", None) is not None:
        raise UnsupportedPipelineError(
            f"{type(pipe).__name__} has a ControlNet (pipe.controlnet), which the SD/SDXL plugin does not serve. "
            "ControlNet pipelines are handled by the built-in plugin 'sadakit.plugins.controlnet.plugin' "
            "(StableDiffusionControlNetPipeline, StableDiffusionXLControlNetPipeline, FluxControlNetPipeline), "
            "which is not registered here (its import failed or it was unregistered)"
        )


@hookimpl
def sadakit_supported_pipelines() -> list[str]:
    return list(_SD + _SDXL)


@hookimpl
def sadakit_denoiser(pipe: Any) -> DenoiserSpec:
    return DenoiserSpec(module=pipe.unet, sample_arg="sample", timestep_arg="timestep")


@hookimpl
def sadakit_parameterization(pipe: Any):
    return unet_parameterization(pipe)


@hookimpl
def sadakit_cfg_groups(pipe: Any, batch_size: int):
    return cfg_pairs(pipe, batch_size)


@hookimpl
def sadakit_token_blocks(pipe: Any, denoiser):
    return unet_token_blocks(denoiser)


@hookimpl
def sadakit_default_config(pipe: Any) -> SADAConfig:
    return SADAConfig()
