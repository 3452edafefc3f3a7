"""Built-in plugin: CogVideoX text-to-video (``CogVideoXPipeline``), one :class:`~sadakit.plugins.dit.DiTFamily`.

Not flow matching: CogVideoX is a v-prediction model on a VP schedule (CogVideoXDDIMScheduler /
CogVideoXDPMScheduler, zero terminal SNR, an SNR shift baked into ``alphas_cumprod``). The
transformer receives the integer DDPM index ``t`` and the latent in the VP chart
(``scale_model_input`` is the identity), so the parameterisation is
``VPParameterization(scheduler.alphas_cumprod, prediction_type)``, read at every generation from
the pipeline's current scheduler.

Latents are (B, F, C, H, W), frames before channels. The patch embedding cuts each frame into
``patch_size`` x ``patch_size`` patches (and, in CogVideoX 1.5, ``patch_size_t`` frames per
patch; the pipeline pads the latent frames to a multiple of it): the blocks see
(F / p_t) x (H / p) x (W / p) video tokens, frame-major then row-major, after the text tokens,
which the transformer splits off before the blocks.

CFG is batched into one call, rows ``[uncond..., cond...]``, inside ``cache_context("cond_uncond")``:
one call stream whose CFG halves decide together (``cfg_groups``).

Blocks are called by keyword and return ``(hidden_states, encoder_hidden_states)``: the video
tokens are output 0. The rotary table ``image_rotary_emb = (cos, sin)``, each (N, D) without a
batch dimension, covers the video tokens only (the attention applies it after the text
tokens): ``TokenArg(dim=0)``, so all rows of a call share one token set. CogVideoX-2B's
sin-cos positions are added in the patch embedding and need nothing here.

Not served (left unclaimed): ``CogVideoXImageToVideoPipeline`` and ``CogVideoXFunControlPipeline``
concatenate condition channels to the latent, so the denoiser's input is not the state the
scheduler steps; ``CogVideoXVideoToVideoPipeline`` is untested.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.models.transformers.cogvideox_transformer_3d import CogVideoXBlock

from ...core.parameterization import Parameterization
from ...errors import UnsupportedPipelineError
from ...spec import LatentToGrid, TokenArg
from ..dit import DiTFamily, DiTPlugin, is_flow_scheduler
from ..unet_common import unet_parameterization


def cogvideox_grid(pipe: Any) -> LatentToGrid:
    """(B, F, C, H, W) per-element map -> (B, F / p_t, H / p, W / p): the mean over channels,
    averaged over each patch (p_t = 1 before CogVideoX 1.5)."""
    config = pipe.transformer.config
    patch = (config.patch_size_t or 1, config.patch_size, config.patch_size)

    def to_grid(m: torch.Tensor, arguments: dict[str, Any]) -> torch.Tensor:
        per_element = m.mean(dim=2)  # frames before channels
        if patch == (1, 1, 1):
            return per_element
        return torch.nn.functional.avg_pool3d(per_element.unsqueeze(1), patch, patch).squeeze(1)

    return to_grid


def cogvideox_parameterization(pipe: Any) -> Parameterization:
    """The VP parameterisation of the pipeline's current scheduler (its ``alphas_cumprod``
    carry CogVideoX's SNR shift and zero-terminal-SNR rescaling); flow schedulers refused."""
    if is_flow_scheduler(pipe.scheduler):
        raise UnsupportedPipelineError(
            f"{type(pipe).__name__}: scheduler {type(pipe.scheduler).__name__} is a flow-matching scheduler, but "
            "CogVideoX is a v-prediction model on a VP schedule; use CogVideoXDDIMScheduler or "
            "CogVideoXDPMScheduler (the pipeline's own)"
        )
    return unet_parameterization(pipe)


def batched_cfg_pairs(pipe: Any, batch_size: int) -> list[list[int]] | None:
    """CFG batched as ``[uncond..., cond...]``: row i and row i + B/2 are one prompt.

    CogVideoX decides CFG from the call's ``guidance_scale > 1`` (it has no
    ``do_classifier_free_guidance`` property); the pipeline stores it before the first call.
    """
    try:
        cfg_on = float(pipe.guidance_scale) > 1.0
    except (AttributeError, TypeError):  # read before the pipeline's first __call__
        cfg_on = False
    if not cfg_on or batch_size % 2:
        return None
    half = batch_size // 2
    return [[i, i + half] for i in range(half)]


COGVIDEOX = DiTFamily(
    family="cogvideox",
    pipelines=("CogVideoXPipeline",),
    latent_to_grid=cogvideox_grid,
    block_classes=(CogVideoXBlock,),
    token_args={"image_rotary_emb": TokenArg(dim=0)},
    output_index=0,
    # the rotary table has N rows, not B: never cut it by row when some rows of a call are skipped
    unbatched_args=frozenset({"image_rotary_emb"}),
    cfg_groups=batched_cfg_pairs,
    parameterization=cogvideox_parameterization,
    output_kind="video",
)

plugin = DiTPlugin([COGVIDEOX])
