"""Built-in plugin: Wan 2.1 text-to-video (``WanPipeline``), one :class:`~sadakit.plugins.dit.DiTFamily`.

The denoiser is ``pipe.transformer`` (``WanTransformer3DModel``). Its latent is
(B, C, F, H, W); the transformer patchifies it by ``config.patch_size`` (p_t, p_h, p_w) into
(F / p_t) x (H / p_h) x (W / p_w) tokens, frame-major then row-major, and every block sees all
of them (``layout="exact"`` on that three-axis grid). It receives ``1000 * sigma`` as its
timestep, so the flow time is ``timestep * 1e-3``.

With CFG the pipeline calls the transformer twice per step, inside diffusers'
``cache_context("cond")`` and ``("uncond")``: the runtime keeps one call stream per branch and
decides both together; nothing here has to say so.

Blocks are called as ``block(hidden_states, encoder_hidden_states, temb, rotary_emb)``, all
positional. The rotary table ``(cos, sin)``, each (1, N, 1, D), is indexed by token, and so is
``temb`` where it carries one modulation per token (Wan 2.2 TI2V: (B, N, 6, C); Wan 2.1's
(B, 6, C) is left alone by the size rule of :class:`sadakit.TokenArg`).
"""

from __future__ import annotations

from typing import Any

from diffusers.models.transformers.transformer_wan import WanTransformerBlock

from ...spec import TokenArg
from ..dit import DiTFamily, DiTPlugin, patchified_grid


def _second_expert(pipe: Any) -> str | None:
    if getattr(pipe, "transformer_2", None) is not None:
        return ("it has a second transformer (Wan 2.2's low-noise expert, transformer_2): sadakit would accelerate "
                "only the high-noise steps and leave the expert switch unseen, so it refuses; Wan 2.1 and "
                "single-expert Wan 2.2 (TI2V-5B) pipelines are supported")
    return None


WAN = DiTFamily(
    family="wan",
    pipelines=("WanPipeline",),
    latent_to_grid=patchified_grid(),
    block_classes=(WanTransformerBlock,),
    token_args={"rotary_emb": TokenArg(dim=1), "temb": TokenArg(dim=1)},
    refuse=_second_expert,
    output_kind="video",
    scheduler_hint="UniPCMultistepScheduler(prediction_type='flow_prediction', use_flow_sigmas=True) (the "
                   "pipeline's own) or FlowMatchEulerDiscreteScheduler",
)

plugin = DiTPlugin([WAN])
