"""Built-in plugin: Wan image-to-video (``WanImageToVideoPipeline``), claimed so that it is
refused with its reason, before anything changes, instead of being left unclaimed.

Why it cannot be served through the contract: in Wan 2.1 image-to-video the pipeline calls
the transformer with ``hidden_states = cat([latents, condition], dim=1)``: the 16 noisy latent
channels followed by 20 condition channels (4 first-frame mask channels and the 16-channel
VAE encoding of the image), while the transformer predicts a 16-channel flow velocity (and
also receives ``encoder_hidden_states_image`` from the CLIP vision encoder, which is harmless).
SADA forms its data estimate as ``x0 = x - sigma * v`` from the denoiser's sample argument and
output, and reuses / extrapolates ``x0`` in the sample's chart. Here the sample (36 channels)
is not in the output's chart (16 channels); the right ``x`` would be the first 16 channels of
``hidden_states`` only, but :class:`sadakit.DenoiserSpec` names a sample argument, not a channel
slice of it, and a :class:`~sadakit.core.parameterization.Parameterization` sees the whole
sample. Serving it would need a contract addition (e.g. a sample-channel selector), so this
plugin refuses rather than guess.

Two further layouts are refused with their own reasons: ``expand_timesteps=True`` (Wan 2.2
TI2V image-to-video: a per-token timestep that holds the first frame at t = 0) and a second
transformer (Wan 2.2 A14B's low-noise expert).
"""

from __future__ import annotations

from typing import Any

from diffusers.models.transformers.transformer_wan import WanTransformerBlock

from ...spec import TokenArg
from ..dit import DiTFamily, DiTPlugin, patchified_grid


def why_refused(pipe: Any) -> str:
    """The reason this pipeline cannot be accelerated (every configuration has one)."""
    if getattr(pipe.config, "expand_timesteps", False):
        return ("expand_timesteps=True (Wan 2.2 TI2V image-to-video) gives the transformer a per-token timestep "
                "that holds the first frame's tokens at t = 0; sadakit's parameterisation takes one noise level "
                "per sample, so it refuses")
    if getattr(pipe, "transformer_2", None) is not None:
        return ("it has a second transformer (Wan 2.2's low-noise expert, transformer_2): sadakit would accelerate "
                "only the high-noise steps and leave the expert switch unseen, so it refuses")
    config = pipe.transformer.config
    latent = int(config.out_channels or config.in_channels)
    extra = int(config.in_channels) - latent
    return (f"the transformer's hidden_states are {config.in_channels} channels: the {latent} noisy latent "
            f"channels with {extra} image-condition channels concatenated by the pipeline (first-frame mask and "
            f"encoded image), while it predicts {latent}; SADA's x0 = x - sigma * v needs the sample in the output's "
            "chart, and the contract's DenoiserSpec cannot name the noisy channels of its sample argument, so "
            "sadakit refuses image-to-video rather than guess (WanPipeline text-to-video is supported)")


WAN_I2V = DiTFamily(
    family="wan_i2v",
    pipelines=("WanImageToVideoPipeline",),
    latent_to_grid=patchified_grid(),
    block_classes=(WanTransformerBlock,),
    token_args={"rotary_emb": TokenArg(dim=1), "temb": TokenArg(dim=1)},
    refuse=why_refused,
    output_kind="video",
)

plugin = DiTPlugin([WAN_I2V])
