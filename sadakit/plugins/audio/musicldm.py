"""Built-in plugin: MusicLDM, AudioLDM and AudioLDM2 (mel-spectrogram latents, UNet denoisers).

All three call their UNet once per step with the latent as ``sample`` and the step as
``timestep``; only the conditioning differs. MusicLDM and AudioLDM use a plain
``UNet2DConditionModel`` called as ``unet(latents, t, encoder_hidden_states=None,
class_labels=clap_embeds, return_dict=False)``: the CLAP text embedding enters through the
class-embedding path and the "cross"-attention blocks attend to the spectrogram tokens
themselves. AudioLDM2 uses its own ``AudioLDM2UNet2DConditionModel`` with two cross-attention
streams (GPT-2 generated embeddings and T5/CLAP embeddings), built from the same
``Transformer2DModel`` / ``BasicTransformerBlock`` pieces, so the same token-block path applies.
Latents are (B, C, T, F) mel-spectrogram latents (time x frequency, F = 16 for the released
models), never square: the token grid of every transformer block is (ceil(T / 2^k),
ceil(F / 2^k)) and the stability map is pooled to it.

Two instance-level shims are installed by ``sadakit_prepare`` and removed exactly by
``sadakit_restore``:

* MusicLDM under transformers >= 5 cannot encode prompts at all (``get_text_features`` returns
  an output object, see :mod:`sadakit.plugins.audio.compat`; diffusers fixed this in AudioLDM2
  but not in the deprecated MusicLDM pipeline). The plugin applies the fix while accelerated,
  unless the user already applied it with :func:`sadakit.plugins.audio.fix_musicldm`. After
  ``sadakit.remove`` the pipeline is exactly as it was, broken included.
* These pipelines decide classifier-free guidance in a local variable of ``__call__``
  (``guidance_scale > 1``), not in a ``do_classifier_free_guidance`` property. The plugin wraps
  the prompt encoder on the instance to read that flag, so that the two CFG halves of a prompt
  decide together.
"""

from __future__ import annotations

import inspect
import logging
import weakref
from types import MethodType
from typing import Any

from ...config import SADAConfig
from ...errors import UnsupportedPipelineError
from ...hookspecs import hookimpl
from ...spec import DenoiserSpec
from ..unet_common import unet_parameterization, unet_token_blocks
from .compat import ensure_musicldm_compat, undo_musicldm_compat

logger = logging.getLogger("sadakit")

#: Family name per supported class (matched by name in the MRO, see ``_family_of``).
_FAMILIES = {"MusicLDMPipeline": "musicldm", "AudioLDMPipeline": "audioldm", "AudioLDM2Pipeline": "audioldm2"}
#: The prompt encoder each family's ``__call__`` invokes with ``do_classifier_free_guidance``.
_ENCODERS = {"musicldm": "_encode_prompt", "audioldm": "_encode_prompt", "audioldm2": "encode_prompt"}
_CFG_ARG = "do_classifier_free_guidance"

#: CFG flag of the pipeline's current (last) generation, recorded by the prompt-encoder wrapper.
_cfg_flags: "weakref.WeakKeyDictionary[Any, bool]" = weakref.WeakKeyDictionary()
#: Pipelines on which this plugin (not the user) applied the transformers-5 shim.
_owned_compat: "weakref.WeakSet[Any]" = weakref.WeakSet()


def _family_of(pipe: Any) -> str | None:
    """Match by class name in the MRO (user subclasses included) instead of ``isinstance``:
    the classes live in ``diffusers.pipelines.deprecated``, and importing them only to answer
    "is this yours?" for an image pipeline would load deprecated modules for nothing."""
    for cls in type(pipe).__mro__:
        if cls.__module__.startswith("diffusers.") and cls.__name__ in _FAMILIES:
            return _FAMILIES[cls.__name__]
    return None


# ------------------------------------------------------------------ CFG flag recorder


def _encoder_attr(pipe: Any) -> str:
    return _ENCODERS[_family_of(pipe) or "musicldm"]


def _recording_encode_prompt(self: Any, *args: Any, **kwargs: Any) -> Any:
    """The pipeline's own prompt encoder, after noting whether this generation uses CFG."""
    original = getattr(type(self), _encoder_attr(self))
    try:
        bound = inspect.signature(original).bind(self, *args, **kwargs)
        _cfg_flags[self] = bool(bound.arguments[_CFG_ARG])
    except (TypeError, KeyError):  # an unexpected signature: rows then decide independently
        _cfg_flags.pop(self, None)
    return original(self, *args, **kwargs)


def _is_recorder(value: Any) -> bool:
    return isinstance(value, MethodType) and value.__func__ is _recording_encode_prompt


def _install_recorder(pipe: Any) -> None:
    attr = _encoder_attr(pipe)
    if attr in pipe.__dict__:
        if not _is_recorder(pipe.__dict__[attr]):
            logger.info(
                "sadakit: %s has its own %s on the instance; CFG halves will decide independently",
                type(pipe).__name__,
                attr,
            )
        return
    pipe.__dict__[attr] = MethodType(_recording_encode_prompt, pipe)


def _remove_recorder(pipe: Any) -> None:
    attr = _encoder_attr(pipe)
    if _is_recorder(pipe.__dict__.get(attr)):
        del pipe.__dict__[attr]
    _cfg_flags.pop(pipe, None)


def claim_compat(pipe: Any) -> None:
    """Hand the transformers-5 shim on ``pipe`` to the user: ``remove`` will then keep it."""
    _owned_compat.discard(pipe)


# ------------------------------------------------------------------ the contract


@hookimpl
def sadakit_family(pipe: Any) -> str | None:
    return _family_of(pipe)


@hookimpl
def sadakit_supported_pipelines() -> list[str]:
    return list(_FAMILIES)


@hookimpl
def sadakit_denoiser(pipe: Any) -> DenoiserSpec:
    # (B, C, T, F) latents: the default channels-first grid gives a (B, T, F) token map.
    return DenoiserSpec(module=pipe.unet, sample_arg="sample", timestep_arg="timestep")


@hookimpl
def sadakit_parameterization(pipe: Any):
    return unet_parameterization(pipe)


@hookimpl
def sadakit_cfg_groups(pipe: Any, batch_size: int) -> list[list[int]] | None:
    """[uncond, cond] concatenation as in every diffusers pipeline: rows i and i + B/2."""
    if not _cfg_flags.get(pipe, False) or batch_size % 2:
        return None
    half = batch_size // 2
    return [[i, i + half] for i in range(half)]


@hookimpl
def sadakit_token_blocks(pipe: Any, denoiser):
    return unet_token_blocks(denoiser)


@hookimpl
def sadakit_default_config(pipe: Any) -> SADAConfig:
    return SADAConfig()


@hookimpl
def sadakit_validate(pipe: Any, config: SADAConfig) -> None:
    import torch

    unet = getattr(pipe, "unet", None)
    if not isinstance(unet, torch.nn.Module) or int(getattr(unet.config, "in_channels", 0)) <= 0:
        raise UnsupportedPipelineError(
            f"{type(pipe).__name__}: expected a UNet denoiser in pipe.unet (the MusicLDM/AudioLDM layout), "
            f"got {type(unet).__name__}"
        )


@hookimpl
def sadakit_prepare(pipe: Any) -> None:
    if _family_of(pipe) == "musicldm" and ensure_musicldm_compat(pipe):
        _owned_compat.add(pipe)
        logger.info("sadakit: applied the transformers-5 CLAP fix to %s while accelerated", type(pipe).__name__)
    _install_recorder(pipe)


@hookimpl
def sadakit_restore(pipe: Any) -> None:
    _remove_recorder(pipe)
    if pipe in _owned_compat:
        _owned_compat.discard(pipe)
        undo_musicldm_compat(pipe)
