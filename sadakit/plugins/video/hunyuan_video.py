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

Step skipping only, no token pruning: both the double-stream ``HunyuanVideoTransformerBlock``
and the single-stream ``HunyuanVideoSingleTransformerBlock`` are called positionally with an
attention mask of shape (B, 1, 1, N + T) whose *first* N entries are the video tokens and
whose last T are the text tokens (the single-stream blocks concatenate ``[video, text]``).
:class:`sadakit.TokenArg` keeps leading entries and indexes the *last* N, so the mask cannot
be sliced by the contract, and a block receiving an unsliced mask with fewer tokens would fail.
No block is declared as a token block; ``sadakit_token_blocks`` returns none and SADA's
token-level criterion is not used (the rotary table ``(cos, sin)``, each (N, D), would fit
``TokenArg(dim=0)``, but the mask rules the blocks out).

Not served (left unclaimed): ``HunyuanVideoImageToVideoPipeline`` (token-replace / latent-concat
image conditioning), ``HunyuanVideoFramepackPipeline`` and HunyuanVideo 1.5 pipelines.
"""

from __future__ import annotations

from typing import Any

import torch

from ...spec import LatentToGrid
from ..dit import DiTFamily, DiTPlugin


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


HUNYUAN_VIDEO = DiTFamily(
    family="hunyuan_video",
    pipelines=("HunyuanVideoPipeline",),
    latent_to_grid=hunyuan_video_grid,
    block_classes=(),  # the attention mask is laid out [video, text]: see the module docstring
    refuse=_image_conditioned,
    timestep_scale=1e-3,
    output_kind="video",
)

plugin = DiTPlugin([HUNYUAN_VIDEO])
