"""Built-in plugin: Qwen-Image text-to-image (``QwenImagePipeline``), one :class:`~sadakit.plugins.dit.DiTFamily`.

Flow matching: the transformer (``QwenImageTransformer2DModel``) predicts a velocity and
receives the flow time itself (the pipeline passes ``timestep / 1000``): ``timestep_scale=1``.
Non-flow schedulers are refused.

Latents are packed like Flux's: (B, N, 64), N = (H/16) x (W/16) tokens, row-major; the call's
``img_shapes`` (one ``[(1, h, w)]`` per row) give the grid, and are never cut by rows
(``unbatched_args``).

True CFG (``true_cfg_scale > 1`` and a negative prompt) is one call per branch inside
diffusers' ``cache_context("cond")`` / ``("uncond")``: two call streams, decided together by
the runtime, with no plugin code. Without CFG there is the one ``cond`` stream.

Token sparsity runs in every ``QwenImageTransformerBlock``, called by keyword and returning
``(text, image)`` (``output_index=1``). Its rotary argument is one pair ``(image_freqs (N, D),
text_freqs (T, D))``: only the first element is per image token, ``TokenArg(dim=0,
elements=(0,))`` (the text table passes whole, whatever its length). The text mask is per text
token and the joint mask is built inside the attention from the (cut) image tokens; the
per-token ``modulate_index`` (B, N) of ``zero_cond_t`` checkpoints is cut with them. Text
tokens are never pruned.

Not claimed: the edit, img2img, inpaint, ControlNet and layered Qwen-Image pipelines (each
``DiTFamily`` names exact classes).
"""

from __future__ import annotations

from typing import Any

import torch

from diffusers.models.transformers.transformer_qwenimage import QwenImageTransformerBlock

from ...errors import UnsupportedPipelineError
from ...spec import LatentToGrid, TokenArg
from ..dit import DiTFamily, DiTPlugin


def qwen_image_grid(m: torch.Tensor, arguments: dict[str, Any]) -> torch.Tensor:
    """(B, N, 64) per-element map -> (B, h, w): mean over the packed channels, the grid from the
    call's ``img_shapes`` (``[[(1, h, w)], ...]``, one list per row)."""
    shapes = arguments.get("img_shapes")
    if not shapes:
        raise UnsupportedPipelineError(
            "QwenImagePipeline: the transformer was called without img_shapes; sadakit needs them to place the "
            "packed tokens on a grid")
    first = shapes[0][0] if isinstance(shapes[0], (list, tuple)) and isinstance(shapes[0][0], (list, tuple)) \
        else shapes[0]
    frames, h, w = (int(v) for v in first)
    if frames * h * w != m.shape[1]:
        raise UnsupportedPipelineError(
            f"QwenImagePipeline: img_shapes {first} give {frames * h * w} tokens, the latent has {m.shape[1]}")
    return m.mean(dim=-1).reshape(m.shape[0], h, w) if frames == 1 else \
        m.mean(dim=-1).reshape(m.shape[0], frames, h, w)


def _grid(pipe: Any) -> LatentToGrid:
    return qwen_image_grid


QWEN_IMAGE = DiTFamily(
    family="qwen-image",
    pipelines=("QwenImagePipeline",),
    latent_to_grid=_grid,
    block_classes=(QwenImageTransformerBlock,),
    token_args={"image_rotary_emb": TokenArg(dim=0, elements=(0,)), "modulate_index": TokenArg(dim=1)},
    output_index=1,
    timestep_scale=1.0,
    unbatched_args=frozenset({"img_shapes"}),
)

plugin = DiTPlugin([QWEN_IMAGE])

__all__ = ["QWEN_IMAGE", "plugin", "qwen_image_grid"]
