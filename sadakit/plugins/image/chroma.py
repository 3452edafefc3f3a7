"""Built-in plugin: Chroma (``ChromaPipeline``), one :class:`~sadakit.plugins.dit.DiTFamily`.

Chroma is Flux-shaped: the denoiser ``pipe.transformer`` (``ChromaTransformer2DModel``) takes
packed latents (B, N, 64) whose tokens ``img_ids`` place on the (H/16) x (W/16) grid, so the
grid comes from :func:`sadakit.plugins.image.flux.packed_latent_to_grid`, and the ids
(tokens, 3) are never sliced by rows. It receives the flow time itself (the pipeline passes
``timestep / 1000``): ``timestep_scale=1``.

CFG is one call per branch on the same latent tensor, without diffusers' ``cache_context``:
:class:`sadakit.spec.StreamsByRepeatedSample` names them ``call0`` (cond) and ``call1``
(uncond), and the runtime decides both together.

Token sparsity runs in the double-stream ``ChromaTransformerBlock``s, called as
``block(hidden_states=image, encoder_hidden_states=text, temb, image_rotary_emb=(cos, sin),
attention_mask=(B, T + N))`` and returning ``(text, image)``. The rotary table is (T + N, D),
text first, with no batch dimension (``TokenArg(dim=0)``: the rows of a call share one token
set); the attention mask is (B, T + N), text first (``TokenArg(dim=1)``). The single-stream
``ChromaSingleTransformerBlock``s take [text, image] as one (B, T + N, C) sequence and return
it: the T text tokens are other tokens in front of the grid's (``OtherTokens("leading")``,
their count whatever the prompt gives), always computed; the rotary table and the mask cover
the same sequence, text first, and are declared as in the double-stream blocks.

Refused: a loaded IP-adapter (``transformer.encoder_hid_proj``): the pipeline passes its
embeddings through ``joint_attention_kwargs`` and the model rewrites that dict during the call;
not validated on skipped or partial calls.
"""

from __future__ import annotations

from typing import Any

from diffusers.models.transformers.transformer_chroma import ChromaSingleTransformerBlock, ChromaTransformerBlock

from ...spec import OtherTokens, StreamsByRepeatedSample, TokenArg
from ..dit import BlockTokens, DiTFamily, DiTPlugin
from .flux import FLUX_UNBATCHED_ARGS, packed_latent_to_grid


def _ip_adapter(pipe: Any) -> str | None:
    if getattr(pipe.transformer, "encoder_hid_proj", None) is not None:
        return ("an IP-adapter is loaded (transformer.encoder_hid_proj): the pipeline hands its embeddings to the "
                "model through joint_attention_kwargs, which the model rewrites during every call, and sadakit has "
                "not been validated on skipped, row-sliced or partial calls of that path; call "
                "pipe.unload_ip_adapter() first")
    return None


#: both block kinds: the rotary table (T + N, D) and the mask (B, T + N), text first
CHROMA_TOKEN_ARGS = {"image_rotary_emb": TokenArg(dim=0), "attention_mask": TokenArg(dim=1)}

CHROMA = DiTFamily(
    family="chroma",
    pipelines=("ChromaPipeline",),
    latent_to_grid=lambda pipe: packed_latent_to_grid,
    block_classes=(ChromaTransformerBlock,),
    timestep_scale=1.0,
    token_args=CHROMA_TOKEN_ARGS,
    output_index=1,
    blocks=(BlockTokens(ChromaSingleTransformerBlock, token_args=CHROMA_TOKEN_ARGS,
                        other_tokens=OtherTokens("leading")),),
    unbatched_args=FLUX_UNBATCHED_ARGS,
    call_stream=lambda pipe: StreamsByRepeatedSample("hidden_states"),
    refuse=_ip_adapter,
)

plugin = DiTPlugin([CHROMA])
