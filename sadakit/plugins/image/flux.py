"""Built-in plugin: Flux (MMDiT on a flow-matching schedule).

Pipelines: ``FluxPipeline``, ``FluxImg2ImgPipeline``, ``FluxInpaintPipeline``. The denoiser is
``pipe.transformer``; it receives the flow time t in [0, 1] (the pipelines pass
``timestep / 1000`` and the model multiplies by 1000 internally), so the parameterisation is
``FlowParameterization(timestep_scale=1)``.

Latents are packed 2x2 patches: (B, N, 64) with N = (H/16) * (W/16) tokens, row-major on the
grid that ``img_ids`` describes. Token sparsity runs in every double-stream and single-stream
block (see :mod:`sadakit.plugins.image.flux_blocks`); text tokens are never pruned.
"""

from __future__ import annotations

import weakref
from typing import Any

import diffusers
import torch

from ...config import SADAConfig
from ...core.parameterization import FlowParameterization
from ...errors import UnsupportedPipelineError
from ...hookspecs import hookimpl
from ...spec import DenoiserSpec, StreamsByRepeatedSample, TokenArg, TokenBlockSpec

_FLUX = ("FluxPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline")
_FLUX_CLASSES = tuple(getattr(diffusers, n) for n in _FLUX if hasattr(diffusers, n))

# img_ids tensor -> packed (h, w); keyed by id with a weak reference, so a freed tensor whose id
# is reused never returns a stale grid. One host read per new img_ids tensor, not per call.
_GRID_CACHE: dict[int, tuple[weakref.ref, tuple[int, int]]] = {}


def packed_grid_shape(img_ids: torch.Tensor, n_tokens: int) -> tuple[int, int]:
    """The (h, w) packed-token grid that Flux's ``img_ids`` (N, 3: [0, row, col]) describe."""
    key = id(img_ids)
    hit = _GRID_CACHE.get(key)
    if hit is not None and hit[0]() is img_ids and hit[1][0] * hit[1][1] == n_tokens:
        return hit[1]
    ids = img_ids[0] if img_ids.dim() == 3 else img_ids
    rows, cols = ids[:, 1].round().long(), ids[:, 2].round().long()
    rows, cols = rows - rows.min(), cols - cols.min()
    h, w = int(rows.max()) + 1, int(cols.max()) + 1
    row_major = torch.equal(rows * w + cols, torch.arange(ids.shape[0], device=ids.device))
    if h * w != n_tokens or ids.shape[0] != n_tokens or not row_major:
        raise UnsupportedPipelineError(
            f"Flux img_ids describe a {h} x {w} grid ({ids.shape[0]} ids) but the latent has {n_tokens} image tokens "
            "(or the ids are not row-major); sadakit's Flux plugin supports one image's packed tokens per call "
            "(reference-image tokens as in Kontext are not supported)"
        )
    if len(_GRID_CACHE) > 16:
        _GRID_CACHE.clear()
    _GRID_CACHE[key] = (weakref.ref(img_ids), (h, w))
    return h, w


def packed_latent_to_grid(m: torch.Tensor, arguments: dict[str, Any]) -> torch.Tensor:
    """(B, N, 64) per-element map -> (B, h, w): mean over the packed channels, grid from img_ids."""
    img_ids = arguments.get("img_ids")
    if img_ids is None:
        raise UnsupportedPipelineError(
            "the Flux denoiser was called without img_ids; sadakit needs them to place the packed tokens on a grid"
        )
    h, w = packed_grid_shape(img_ids, m.shape[1])
    return m.mean(dim=-1).reshape(m.shape[0], h, w)


def flux_parameterization(pipe: Any) -> FlowParameterization:
    """Flow matching with t in [0, 1]; any other scheduler family is refused."""
    sched = pipe.scheduler
    name = type(sched).__name__
    cfg = sched.config
    flow = "FlowMatch" in name or bool(cfg.get("use_flow_sigmas")) or cfg.get("prediction_type") == "flow_prediction"
    if not flow:
        raise UnsupportedPipelineError(
            f"{type(pipe).__name__}: scheduler {name} is not a flow-matching scheduler, but Flux predicts a velocity "
            "on a flow-matching schedule; use FlowMatchEulerDiscreteScheduler / FlowMatchHeunDiscreteScheduler "
            "(or a solver with use_flow_sigmas=True and prediction_type='flow_prediction')"
        )
    return FlowParameterization(timestep_scale=1.0)


#: Flux's positional ids are (tokens, 3): never sliced by rows, whatever the batch size.
FLUX_UNBATCHED_ARGS = frozenset({"img_ids", "txt_ids"})


def flux_denoiser(pipe: Any) -> DenoiserSpec:
    return DenoiserSpec(
        module=pipe.transformer,
        sample_arg="hidden_states",
        timestep_arg="timestep",
        latent_to_grid=packed_latent_to_grid,
        output_field="sample",
        unbatched_args=FLUX_UNBATCHED_ARGS,
        call_stream=StreamsByRepeatedSample("hidden_states"),
    )


#: Flux blocks are called as ``block(hidden_states=image, encoder_hidden_states=text, temb=...,
#: image_rotary_emb=(cos, sin), joint_attention_kwargs=...)`` and return ``(text, image)``. The
#: rotary table has T + N rows, text first: its last N rows are the image tokens'. On a partial
#: call pruned image tokens serve neither as queries nor as keys/values; text tokens always stay.
FLUX_TOKEN_ARGS = {"image_rotary_emb": TokenArg(dim=0)}


def flux_token_blocks(transformer: torch.nn.Module) -> list[TokenBlockSpec]:
    """Every double-stream and single-stream block: both see [text, image] with one rotary table."""
    from diffusers.models.transformers.transformer_flux import FluxSingleTransformerBlock, FluxTransformerBlock

    return [
        TokenBlockSpec(module=module, name=name, layout="exact", token_args=FLUX_TOKEN_ARGS, output_index=1)
        for name, module in transformer.named_modules()
        if isinstance(module, (FluxTransformerBlock, FluxSingleTransformerBlock))
    ]


# ----------------------------------------------------------------------------- hookimpls


@hookimpl
def sadakit_family(pipe: Any) -> str | None:
    return "flux" if isinstance(pipe, _FLUX_CLASSES) else None


@hookimpl
def sadakit_supported_pipelines() -> list[str]:
    return list(_FLUX)


@hookimpl
def sadakit_denoiser(pipe: Any) -> DenoiserSpec:
    return flux_denoiser(pipe)


@hookimpl
def sadakit_parameterization(pipe: Any) -> FlowParameterization:
    return flux_parameterization(pipe)


@hookimpl
def sadakit_cfg_groups(pipe: Any, batch_size: int):
    # guidance is an embedding (one call per row); true CFG's branches are separate call streams
    return None


@hookimpl
def sadakit_token_blocks(pipe: Any, denoiser):
    return flux_token_blocks(denoiser)


@hookimpl
def sadakit_default_config(pipe: Any) -> SADAConfig:
    return SADAConfig()

