"""Built-in plugin: Wan 2.1 and 2.2 text-to-video (``WanPipeline``), one :class:`~sadakit.plugins.dit.DiTFamily`.

The denoiser is ``pipe.transformer`` (``WanTransformer3DModel``). Its latent is
(B, C, F, H, W); the transformer patchifies it by ``config.patch_size`` (p_t, p_h, p_w) into
(F / p_t) x (H / p_h) x (W / p_w) tokens, frame-major then row-major, and every block sees all
of them (``layout="exact"`` on that three-axis grid). It receives ``1000 * sigma`` as its
timestep, so the flow time is ``timestep * 1e-3``.

With CFG the pipeline calls the transformer twice per step, inside diffusers'
``cache_context("cond")`` and ``("uncond")``: the runtime keeps one call stream per branch and
decides both together; nothing here has to say so.

Wan 2.2 A14B has two experts: ``transformer`` for the steps with ``t >= boundary_ratio *
num_train_timesteps`` and ``transformer_2`` after them. Both are declared
(:attr:`sadakit.DenoiserSpec.experts`): every call of either is served and counted, and the
runtime never extrapolates across the switch. Single-expert Wan 2.2 (TI2V-5B) is a plain
``transformer`` whose blocks get one modulation per token.

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


def why_refused(pipe: Any) -> str | None:
    """Layouts of the Wan pipelines that cannot be served (shared with image-to-video)."""
    if getattr(pipe, "transformer", None) is None:
        return ("it has no `transformer` (only transformer_2): sadakit serves the high-noise transformer and, as an "
                "expert, transformer_2; load the pipeline with its transformer")
    if getattr(pipe.config, "expand_timesteps", False) and type(pipe).__name__ != "WanPipeline":
        return ("expand_timesteps=True (Wan 2.2 TI2V image-to-video) gives the transformer a per-token timestep "
                "that holds the first frame's tokens at t = 0; sadakit's parameterisation takes one noise level "
                "per sample, so it refuses")
    return None


WAN = DiTFamily(
    family="wan",
    pipelines=("WanPipeline",),
    latent_to_grid=patchified_grid(),
    block_classes=(WanTransformerBlock,),
    token_args={"rotary_emb": TokenArg(dim=1), "temb": TokenArg(dim=1)},
    refuse=why_refused,
    expert_attrs=("transformer_2",),
    output_kind="video",
    scheduler_hint="UniPCMultistepScheduler(prediction_type='flow_prediction', use_flow_sigmas=True) (the "
                   "pipeline's own) or FlowMatchEulerDiscreteScheduler",
)

plugin = DiTPlugin([WAN])
