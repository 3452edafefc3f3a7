"""Built-in plugin: Flux Kontext (``FluxKontextPipeline``), image editing with Flux.

Kontext feeds the transformer the packed latent tokens followed by the reference image's tokens
(``torch.cat([latents, image_latents], dim=1)``, ``img_ids`` likewise) and keeps only the first
part of the output. Both the sample and the output carry every token, so the flow chart holds
for the whole sequence (the reference part stays fixed, its extrapolation is trivial), and step
skipping works as on Flux. The tokens do not form one 2-D grid (two images side by side in one
sequence), so the token grid is the 1-D sequence itself: every block sees exactly those tokens
(``layout="exact"``), anchors are spread along it, and the rotary rows follow the kept tokens.
True CFG calls the transformer twice on the same input without cache contexts: the calls are
named by their order (``StreamsByRepeatedSample``).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.models.transformers.transformer_flux import FluxSingleTransformerBlock, FluxTransformerBlock

from ...spec import LatentToGrid, StreamsByRepeatedSample
from ..dit import DiTFamily, DiTPlugin
from .flux import FLUX_TOKEN_ARGS, FLUX_UNBATCHED_ARGS


def token_sequence(pipe: Any) -> LatentToGrid:
    """(B, N, C) packed tokens (latent, then reference) -> (B, N): a 1-D token grid."""

    def to_grid(m: torch.Tensor, arguments: dict[str, Any]) -> torch.Tensor:
        return m.mean(dim=-1)

    return to_grid


FLUX_KONTEXT = DiTFamily(
    family="flux-kontext",
    pipelines=("FluxKontextPipeline",),
    latent_to_grid=token_sequence,
    block_classes=(FluxTransformerBlock, FluxSingleTransformerBlock),
    timestep_scale=1.0,  # the pipeline passes t = timestep / 1000 and the model multiplies it back
    token_args=FLUX_TOKEN_ARGS,
    output_index=1,
    unbatched_args=FLUX_UNBATCHED_ARGS,
    call_stream=lambda pipe: StreamsByRepeatedSample("hidden_states"),
)

plugin = DiTPlugin([FLUX_KONTEXT])
