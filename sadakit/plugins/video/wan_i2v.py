"""Built-in plugin: Wan 2.1 and 2.2 A14B image-to-video (``WanImageToVideoPipeline``).

The pipeline calls the transformer with ``hidden_states = cat([latents, condition], dim=1)``:
the noisy latent channels (16) followed by condition channels (4 first-frame mask channels
and the 16-channel VAE encoding of the image: 36 in all), while the transformer predicts a
16-channel flow velocity (2.1 also passes ``encoder_hidden_states_image`` from the CLIP vision
encoder, a per-row argument like the text embeddings). SADA's ``x0 = x - sigma * v`` needs the
sample in the output's chart, so the plugin declares the noisy channels
(:attr:`sadakit.DenoiserSpec.noisy_channels` = the transformer's ``out_channels``): the
runtime reads, judges and extrapolates only them, and the condition channels pass to the
network untouched. Token sparsity works as for text-to-video (the same patch grid).

Wan 2.2 A14B's second transformer is declared as an expert, as in :mod:`.wan`. Refused with
its reason: ``expand_timesteps=True`` (Wan 2.2 TI2V-5B image-to-video), whose per-token
timestep holds the first frame's tokens at t = 0 while the others are noisy.
"""

from __future__ import annotations

from typing import Any

from diffusers.models.transformers.transformer_wan import WanTransformerBlock

from ...spec import TokenArg
from ..dit import DiTFamily, DiTPlugin, patchified_grid
from .wan import why_refused


def noisy_channels(pipe: Any) -> int | None:
    """The transformer's output channels, when its input carries condition channels too."""
    config = pipe.transformer.config
    latent = int(config.out_channels or config.in_channels)
    return latent if int(config.in_channels) > latent else None


WAN_I2V = DiTFamily(
    family="wan_i2v",
    pipelines=("WanImageToVideoPipeline",),
    latent_to_grid=patchified_grid(),
    block_classes=(WanTransformerBlock,),
    token_args={"rotary_emb": TokenArg(dim=1), "temb": TokenArg(dim=1)},
    refuse=why_refused,
    expert_attrs=("transformer_2",),
    noisy_channels=noisy_channels,
    output_kind="video",
    scheduler_hint="UniPCMultistepScheduler(prediction_type='flow_prediction', use_flow_sigmas=True) (the "
                   "pipeline's own) or FlowMatchEulerDiscreteScheduler",
)

plugin = DiTPlugin([WAN_I2V])
