"""Built-in plugin: Stable Audio Open (``StableAudioPipeline``), one :class:`~sadakit.plugins.dit.DiTFamily`.

Not flow matching: the pipeline's ``CosineDPMSolverMultistepScheduler`` runs a v-prediction
model on an EDM-style (VE) sigma schedule (sigma 0.3..500, ``sigma_data`` 1). The transformer
receives the preconditioned input ``c_in * x`` (``scale_model_input``) and, as its timestep,
``c_noise = atan(sigma) * 2 / pi`` (the scheduler's ``precondition_noise``), not EDM's
``log(sigma) / 4``; its output F gives ``x0 = c_skip * x + c_out * F`` with
``c_out = -sigma * sigma_data / sqrt(sigma^2 + sigma_data^2)`` for v-prediction
(``precondition_outputs``). :class:`CosineEDMParameterization` is sadakit's
:class:`~sadakit.EDMParameterization` with that noise map, read from the pipeline's current
scheduler at every generation. Other schedulers are refused (the model's timestep embedding
is trained on the atan map).

The latent is (B, C, T) with a 1-D time axis: ``latent_to_grid`` is the mean over channels,
(B, T). The transformer prepends one global token (seconds + timestep embedding) to the T
latent tokens before its blocks, so every ``StableAudioDiTBlock`` sees 1 + T tokens: token
sparsity runs over time with that token as one other token in front
(``OtherTokens("leading", count=1)``), always computed. The rotary table
``rotary_embedding = (cos, sin)``, each (1 + T, D) without a batch dimension, follows the same
sequence (``TokenArg(dim=0)``: the rows of a call share one token set) and is never cut by
rows (``unbatched_args``); so does the self-attention mask (B, 1 + T) when one is passed. The
cross-attention mask is per text token.

CFG is batched into one call, rows ``[uncond..., cond...]``. The pipeline keeps its CFG switch
in a local variable, so the plugin pairs row i with row i + B/2 whenever a call's batch is
even: with CFG these are one prompt's halves; without CFG and an even number of waveforms the
pairing only makes two rows decide together (never wrong, at most fewer skips).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ...core.parameterization import EDMParameterization, NoiseLevel
from ...errors import UnsupportedPipelineError
from diffusers.models.transformers.stable_audio_transformer import StableAudioDiTBlock

from ...spec import LatentToGrid, OtherTokens, TokenArg, channels_first_grid
from ..dit import BlockTokens, DiTFamily, DiTPlugin

COSINE_SCHEDULER = "CosineDPMSolverMultistepScheduler"


class CosineEDMParameterization(EDMParameterization):
    """EDM preconditioning with the cosine scheduler's noise map ``c_noise = atan(sigma) * 2 / pi``
    (``CosineDPMSolverMultistepScheduler.precondition_noise``): sigma = tan(c_noise * pi / 2)."""

    def level(self, timestep, device) -> NoiseLevel:
        if not torch.is_tensor(timestep):  # a host float becomes float32 before it reaches the device
            timestep = torch.as_tensor(timestep, dtype=torch.float32)
        # first element of a (possibly batched) timestep, on the device, without a host read
        t = timestep.to(device).reshape(-1)[0].to(torch.float32).clamp(0.0, 1.0 - 1e-6)  # c_noise < 1 for every finite sigma
        sigma = torch.tan(t * (math.pi / 2))
        sd = self.sigma_data
        norm = torch.sqrt(sigma**2 + sd**2)
        c_in = 1.0 / norm
        c_skip = sd**2 / (sigma**2 + sd**2)
        c_out = sigma * sd / norm
        if self.prediction_type == "v_prediction":
            c_out = -c_out
        # as EDMParameterization: x_flow = x_ve / (1 + sigma) = x_model / (c_in (1 + sigma)); a, s = c_skip, c_out
        return NoiseLevel(tau=sigma / (1.0 + sigma), in_scale=1.0 / (c_in * (1.0 + sigma)), a=c_skip, s=c_out)


def is_cosine_scheduler(scheduler: Any) -> bool:
    """The class or a subclass of it, matched by name (its module needs torchsde to import)."""
    return any(cls.__name__ == COSINE_SCHEDULER for cls in type(scheduler).__mro__)


def stable_audio_parameterization(pipe: Any) -> CosineEDMParameterization:
    scheduler = pipe.scheduler
    if not is_cosine_scheduler(scheduler):
        raise UnsupportedPipelineError(
            f"{type(pipe).__name__}: scheduler {type(scheduler).__name__} is not supported; Stable Audio's "
            f"transformer is fed the cosine schedule's timestep atan(sigma) * 2 / pi, use {COSINE_SCHEDULER} "
            "(the pipeline's own)"
        )
    prediction_type = scheduler.config.get("prediction_type", "v_prediction")
    if prediction_type not in ("v_prediction", "epsilon"):
        raise UnsupportedPipelineError(
            f"{type(pipe).__name__}: {COSINE_SCHEDULER}(prediction_type={prediction_type!r}) is not supported; "
            "use 'v_prediction' (Stable Audio Open's) or 'epsilon'"
        )
    return CosineEDMParameterization(sigma_data=float(scheduler.config.get("sigma_data", 1.0)),
                                     prediction_type=prediction_type)


def even_batch_pairs(pipe: Any, batch_size: int) -> list[list[int]] | None:
    """Rows ``[uncond..., cond...]``: row i and row i + B/2 decide together when B is even."""
    if batch_size % 2:
        return None
    half = batch_size // 2
    return [[i, i + half] for i in range(half)]


def _grid(pipe: Any) -> LatentToGrid:
    return channels_first_grid  # (B, C, T) -> (B, T)


STABLE_AUDIO = DiTFamily(
    family="stable-audio",
    pipelines=("StableAudioPipeline",),
    latent_to_grid=_grid,
    block_classes=(),
    # the blocks see [global token, T latent tokens]
    blocks=(BlockTokens(StableAudioDiTBlock, other_tokens=OtherTokens("leading", count=1),
                        token_args={"rotary_embedding": TokenArg(dim=0), "attention_mask": TokenArg(dim=1)}),),
    unbatched_args=frozenset({"rotary_embedding"}),
    cfg_groups=even_batch_pairs,
    parameterization=stable_audio_parameterization,
    output_kind="audio",
)

plugin = DiTPlugin([STABLE_AUDIO])

__all__ = ["CosineEDMParameterization", "STABLE_AUDIO", "is_cosine_scheduler", "plugin",
           "stable_audio_parameterization"]
