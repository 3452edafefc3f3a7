"""Built-in plugin: LTX-Video text-to-video (``LTXPipeline``), one :class:`~sadakit.plugins.dit.DiTFamily`.

Flow matching: the pipeline's FlowMatchEulerDiscreteScheduler (resolution-dependent shift) and
a transformer that receives ``1000 * sigma`` as its timestep, so the flow time is
``timestep * 1e-3``.

Latents are packed: (B, N, C) with N = F x H x W latent positions, frame-major then row-major
(the transformer's patch size is 1; the VAE does the patching). The packed sequence carries no
shape, so the grid comes from the call itself: the pipeline passes ``num_frames``, ``height``
and ``width`` (the latent grid) to the transformer, and ``latent_to_grid`` reads them from the
call's bound arguments.

CFG is batched into one call, rows ``[uncond..., cond...]``, inside
``cache_context("cond_uncond")``: one call stream whose CFG halves decide together.

Blocks are called by keyword and return the hidden states. The rotary table
``image_rotary_emb = (cos, sin)``, each (B, N, D) with a batch dimension, is indexed by token:
``TokenArg(dim=1)``. The timestep modulation ``temb`` is (B, 1, 6C) in text-to-video, one per
row, and the text mask is per text token: neither is per video token.

Not served (left unclaimed): ``LTXImageToVideoPipeline`` (a per-token timestep that holds the
first frame at t = 0), ``LTXConditionPipeline`` and ``LTXI2VLongMultiPromptPipeline``
(condition tokens and ``video_coords`` in the packed sequence), ``LTXLatentUpsamplePipeline``
(no denoising loop).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.models.transformers.transformer_ltx import LTXVideoTransformerBlock

from ...errors import UnsupportedPipelineError
from ...spec import LatentToGrid, TokenArg
from ..dit import DiTFamily, DiTPlugin
from ..unet_common import cfg_pairs


def packed_grid(num_frames: Any, height: Any, width: Any, n_tokens: int,
                patch: tuple[int, int, int]) -> tuple[int, int, int]:
    """The (frames, rows, columns) token grid of N packed tokens, from the call's latent sizes
    (divided by the transformer's patch sizes when the pipeline passed unpatched sizes)."""
    if num_frames is None or height is None or width is None:
        raise UnsupportedPipelineError(
            "the LTX transformer was called without num_frames / height / width; sadakit needs them to place "
            "the packed tokens on a frames x height x width grid"
        )
    sizes = (int(num_frames), int(height), int(width))
    for grid in (sizes, tuple(s // p for s, p in zip(sizes, patch))):
        if grid[0] * grid[1] * grid[2] == n_tokens:
            return grid
    raise UnsupportedPipelineError(
        f"the LTX transformer was called with a {sizes[0]} x {sizes[1]} x {sizes[2]} latent but {n_tokens} packed "
        "tokens; sadakit's LTX plugin serves one video's packed tokens per call (no condition tokens)"
    )


def ltx_grid(pipe: Any) -> LatentToGrid:
    """(B, N, C) packed per-element map -> (B, F, H, W), the grid read from the call."""
    config = pipe.transformer.config
    patch = (config.patch_size_t, config.patch_size, config.patch_size)

    def to_grid(m: torch.Tensor, arguments: dict[str, Any]) -> torch.Tensor:
        grid = packed_grid(arguments.get("num_frames"), arguments.get("height"), arguments.get("width"),
                           m.shape[1], patch)
        return m.mean(dim=-1).reshape(m.shape[0], *grid)

    return to_grid


LTX = DiTFamily(
    family="ltx",
    pipelines=("LTXPipeline",),
    latent_to_grid=ltx_grid,
    block_classes=(LTXVideoTransformerBlock,),
    token_args={"image_rotary_emb": TokenArg(dim=1)},
    cfg_groups=cfg_pairs,
    timestep_scale=1e-3,
    output_kind="video",
)

plugin = DiTPlugin([LTX])
