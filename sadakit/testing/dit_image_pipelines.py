"""Tiny random-weight SD3 and Chroma pipelines, built offline from configs.

Why: the SD3 and Chroma plugins must be tested against the real pipeline code (batched CFG
for SD3, one call per branch with text masks for Chroma, their token layouts) on a machine
with no GPU and no model hub. The encoders, the VAE, the scheduler and the locally made
tokenizers come from :mod:`sadakit.testing.pipelines`, so they match the other tiny
pipelines; weights are drawn from ``seed`` without touching the caller's global RNG.

Sizes as there: ``"tiny"`` (~1-2M parameters in all, 64x64 px by default, a 30-step
generation in a few seconds on a 2-core CPU) for correctness tests; ``"medium"`` (wider and
deeper transformers) where compute should dominate the per-call overhead.
"""

from __future__ import annotations

from diffusers import (
    ChromaPipeline,
    ChromaTransformer2DModel,
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)

from sadakit.testing.pipelines import (
    _check_size,
    _clip_text_encoder_with_projection,
    _finish,
    _flow_scheduler,
    _image_vae,
    _seeded,
    _t5_encoder,
)
from sadakit.testing.tokenizers import clip_tokenizer, t5_tokenizer


def _sd3_transformer(size: str, text_dim: int, pooled_dim: int) -> SD3Transformer2DModel:
    """SD3.5-shaped MMDiT: dual attention in the first block, RMS q/k norm, the last block
    context-pre-only (it returns no text stream), patch size 2 on a 16-channel latent."""
    if size == "tiny":
        shape = dict(num_layers=3, attention_head_dim=16, num_attention_heads=4)
    else:
        shape = dict(num_layers=6, attention_head_dim=32, num_attention_heads=6)
    inner = shape["attention_head_dim"] * shape["num_attention_heads"]
    return SD3Transformer2DModel(
        sample_size=8,  # the pipeline's default size: 8 latent px = 64 px
        patch_size=2,
        in_channels=16,
        out_channels=16,
        joint_attention_dim=text_dim,
        caption_projection_dim=inner,
        pooled_projection_dim=pooled_dim,
        pos_embed_max_size=32,  # latent sides up to 64 (512 px)
        dual_attention_layers=(0,),
        qk_norm="rms_norm",
        **shape,
    )


def _sd3_scheduler() -> FlowMatchEulerDiscreteScheduler:
    """The SD3 / SD3.5 scheduler config (fixed shift 3, no resolution-dependent shift)."""
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)


def tiny_sd3_pipeline(size: str = "tiny", seed: int = 0) -> StableDiffusion3Pipeline:
    """SD3.5-shaped pipeline: two CLIP encoders with projection (pooled), a T5 (sequence).

    The CLIP hidden states (32 + 32) are padded to the T5 width (64), as in the real model.
    Image sides multiples of 16 (8x VAE, patch 2), e.g. 64x96 px: a 4 x 6 token grid. Pass a
    small ``max_sequence_length`` (e.g. 16; default 256) to keep the T5 text short; the text
    is then 77 CLIP + that many T5 tokens. CFG (guidance_scale > 1, the default 7) is one
    batched call per step. Tiny: 3 blocks of width 64; medium: 6 of width 192.
    """
    _check_size(size)
    clip_hidden, t5_dim = (32, 64) if size == "tiny" else (64, 128)
    with _seeded(seed):
        text_encoder = _clip_text_encoder_with_projection(clip_hidden, projection_dim=clip_hidden)
        text_encoder_2 = _clip_text_encoder_with_projection(clip_hidden, projection_dim=clip_hidden)
        text_encoder_3 = _t5_encoder(t5_dim)
        transformer = _sd3_transformer(size, text_dim=t5_dim, pooled_dim=2 * clip_hidden)
        vae = _image_vae(latent_channels=16, use_quant_conv=False, use_post_quant_conv=False,
                         scaling_factor=1.5305, shift_factor=0.0609)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=_sd3_scheduler(), vae=vae,
        text_encoder=text_encoder, tokenizer=clip_tokenizer(),
        text_encoder_2=text_encoder_2, tokenizer_2=clip_tokenizer(),
        text_encoder_3=text_encoder_3, tokenizer_3=t5_tokenizer(),
    )
    return _finish(pipe)


def _chroma_transformer(size: str, text_dim: int) -> ChromaTransformer2DModel:
    """Chroma DiT on packed 2x2 latents (64 channels); rope axes sum to the head width."""
    if size == "tiny":
        shape = dict(num_layers=2, num_single_layers=2, attention_head_dim=16, num_attention_heads=4,
                     axes_dims_rope=(4, 6, 6), approximator_hidden_dim=32)
    else:
        shape = dict(num_layers=2, num_single_layers=6, attention_head_dim=64, num_attention_heads=6,
                     axes_dims_rope=(16, 24, 24), approximator_hidden_dim=128)
    return ChromaTransformer2DModel(patch_size=1, in_channels=64, joint_attention_dim=text_dim,
                                    approximator_num_channels=64, approximator_layers=2, **shape)


def tiny_chroma_pipeline(size: str = "tiny", seed: int = 0) -> ChromaPipeline:
    """Chroma1-shaped pipeline: one T5 encoder (with its attention mask), a Chroma DiT, the
    Flux VAE and scheduler.

    Image sides multiples of 16 (8x VAE, 2x2 packing), e.g. 64x96 px: a 4 x 6 token grid.
    Pass a small ``max_sequence_length`` (e.g. 16; default 512). CFG (guidance_scale > 1,
    the default 5) calls the transformer twice per step on the same latent. Tiny: 2 double +
    2 single blocks of width 64; medium: 2 double + 6 single of width 384.
    """
    _check_size(size)
    t5_dim = 32 if size == "tiny" else 64
    with _seeded(seed):
        text_encoder = _t5_encoder(t5_dim)
        transformer = _chroma_transformer(size, text_dim=t5_dim)
        vae = _image_vae(latent_channels=16, use_quant_conv=False, use_post_quant_conv=False,
                         scaling_factor=0.3611, shift_factor=0.1159)
    pipe = ChromaPipeline(scheduler=_flow_scheduler(), vae=vae, text_encoder=text_encoder,
                          tokenizer=t5_tokenizer(), transformer=transformer)
    return _finish(pipe)


__all__ = ["tiny_chroma_pipeline", "tiny_sd3_pipeline"]
