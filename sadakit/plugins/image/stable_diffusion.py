"""Built-in plugin: Stable Diffusion 1.x / 2.x (eps and v-prediction) and SDXL pipelines."""

from __future__ import annotations

from typing import Any

import diffusers

from ...config import SADAConfig
from ...hookspecs import hookimpl
from ..spec import DenoiserSpec
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
    return None


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
