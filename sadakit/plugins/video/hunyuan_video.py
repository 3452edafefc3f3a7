"""Built-in plugin: HunyuanVideo text-to-video (``HunyuanVideoPipeline``), one
:class:`~sadakit.plugins.dit.DiTFamily`, written against the public contract only.

Flow matching: the pipeline's FlowMatchEulerDiscreteScheduler (shift 7 in HunyuanVideo's
config) and a transformer that receives ``1000 * sigma`` as its timestep, so the flow time is
``timestep * 1e-3``. The model is guidance-distilled: the guidance scale goes in as an
embedding (``guidance``), one call per step. True CFG (``true_cfg_scale > 1`` with a negative
prompt) calls the transformer twice per step inside diffusers' ``cache_context("cond")`` and
``("uncond")``: the runtime keeps one call stream per branch and decides both together.

The latent is (B, C, F, H, W), patchified by ``patch_size_t`` x ``patch_size`` x
``patch_size`` into a frames x rows x columns token grid (frame-major, row-major).

Token sparsity runs in both block kinds, called positionally as ``block(video, text, temb,
attention_mask, rotary)`` and returning ``(video, text)`` (``output_index=0``): the
double-stream ``HunyuanVideoTransformerBlock`` (rotary argument ``freqs_cis``) and the
single-stream ``HunyuanVideoSingleTransformerBlock`` (``image_rotary_emb``; it concatenates
[video, text] inside). The rotary table ``(cos, sin)``, each (N, D) without a batch dimension,
covers the video tokens only (``TokenArg(dim=0)``: the rows of a call share one token set). The
attention mask (B, 1, 1, N + T) covers the keys [video, text], the query axis broadcast:
``TokenArg(dim=(2, 3), others="trailing")`` cuts its key axis to the kept video tokens and keeps
the text entries (a pruned video token is in neither the queries nor the keys). Text tokens are
never pruned.

Not served (left unclaimed): ``HunyuanVideoImageToVideoPipeline`` (token-replace / latent-concat
image conditioning), ``HunyuanVideoFramepackPipeline`` and HunyuanVideo 1.5 pipelines.
"""

from __future__ import annotations

from typing import Any

import torch

from diffusers.models.transformers.transformer_hunyuan_video import (
    HunyuanVideoSingleTransformerBlock,
    HunyuanVideoTransformerBlock,
)

from ...spec import LatentToGrid, TokenArg
from ..dit import BlockTokens, DiTFamily, DiTPlugin


def hunyuan_video_grid(pipe: Any) -> LatentToGrid:
    """(B, C, F, H, W) per-element map -> (B, F / p_t, H / p, W / p), the transformer's token grid."""
    config = pipe.transformer.config
    sizes = (int(config.patch_size_t), int(config.patch_size), int(config.patch_size))

    def to_grid(m: torch.Tensor, arguments: dict[str, Any]) -> torch.Tensor:
        per_element = m.mean(dim=1)
        if sizes == (1, 1, 1):
            return per_element
        return torch.nn.functional.avg_pool3d(per_element.unsqueeze(1), kernel_size=sizes, stride=sizes).squeeze(1)

    return to_grid


def _image_conditioned(pipe: Any) -> str | None:
    condition = getattr(pipe.transformer.config, "image_condition_type", None)
    if condition is not None:
        return (f"its transformer is image-conditioned (image_condition_type={condition!r}, an image-to-video "
                "checkpoint): the text-to-video pipeline does not feed that condition, so sadakit refuses")
    return None


#: (B, 1, 1, N + T): [video, text] keys, queries broadcast (a (B, 1, S, S) mask would be cut on both)
_MASK = {"attention_mask": TokenArg(dim=(2, 3), others="trailing")}

HUNYUAN_VIDEO = DiTFamily(
    family="hunyuan_video",
    pipelines=("HunyuanVideoPipeline",),
    latent_to_grid=hunyuan_video_grid,
    block_classes=(),
    blocks=(BlockTokens(HunyuanVideoTransformerBlock, token_args={"freqs_cis": TokenArg(dim=0), **_MASK},
                        output_index=0),
            BlockTokens(HunyuanVideoSingleTransformerBlock,
                        token_args={"image_rotary_emb": TokenArg(dim=0), **_MASK}, output_index=0)),
    refuse=_image_conditioned,
    timestep_scale=1e-3,
    output_kind="video",
)

plugin = DiTPlugin([HUNYUAN_VIDEO])
