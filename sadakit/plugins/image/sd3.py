"""Built-in plugin: Stable Diffusion 3 / 3.5 (``StableDiffusion3Pipeline``), one
:class:`~sadakit.plugins.dit.DiTFamily`.

The denoiser is ``pipe.transformer`` (``SD3Transformer2DModel``). Its latent is (B, 16, H, W);
the patch embedding cuts it into (H / p) x (W / p) tokens, row-major, p = ``config.patch_size``,
and every ``JointTransformerBlock`` sees exactly those (``layout="exact"``). It receives
``1000 * sigma`` as its timestep, so the flow time is ``timestep * 1e-3``.

CFG is batched into one call, rows ``[uncond..., cond...]``: row i and row i + B/2 decide
together (:func:`sadakit.plugins.unet_common.cfg_pairs`).

Blocks are called as ``block(hidden_states=image, encoder_hidden_states=text, temb=(B, C),
joint_attention_kwargs=...)`` and return ``(text, image)``; the last block returns
``(None, image)`` (``context_pre_only``), which the tuple rule handles. No other argument is
indexed by token (SD3 has no rotary table; its positions are added at the patch embedding).
SD3.5's dual-attention blocks also run a self-attention over the image tokens alone; on a
partial call it runs over the selected ones.

Refused: a loaded IP-adapter (its embeddings ride in ``joint_attention_kwargs``, which the
model rewrites during the call; not validated on skipped or partial calls), and skip-layer
guidance (``skip_guidance_layers``): on some steps it adds a third, cond-only call with half
the batch, which no call stream can pair with the batched CFG call. The pipeline names no
stream, so that call is refused when it is made, before it runs.
"""

from __future__ import annotations

from typing import Any

from diffusers.models.attention import JointTransformerBlock

from ..dit import DiTFamily, DiTPlugin, patchified_grid
from ..unet_common import cfg_pairs


def _ip_adapter(pipe: Any) -> str | None:
    if getattr(pipe.transformer, "image_proj", None) is not None:
        return ("an IP-adapter is loaded (transformer.image_proj): its image embeddings reach the blocks through "
                "joint_attention_kwargs, which the model rewrites during every call, and sadakit has not been "
                "validated on skipped, row-sliced or partial calls of that path; call pipe.unload_ip_adapter() first")
    return None


def _skip_layer_guidance(arguments: dict[str, Any]) -> str | None:
    if arguments.get("skip_layers"):
        return ("skip-layer guidance (skip_guidance_layers) is not supported: it adds a cond-only "
                "transformer call with half the batch on some steps, which sadakit cannot pair with the "
                "batched CFG call; generate without skip_guidance_layers, or sadakit.remove(pipe) first")
    return None


SD3 = DiTFamily(
    family="sd3",
    pipelines=("StableDiffusion3Pipeline",),
    latent_to_grid=patchified_grid(),
    block_classes=(JointTransformerBlock,),
    output_index=1,
    cfg_groups=cfg_pairs,
    refuse=_ip_adapter,
    refuse_call=_skip_layer_guidance,
)

plugin = DiTPlugin([SD3])
