"""Tiny random-weight HunyuanVideo text-to-video, Wan 2.1 image-to-video and Wan 2.2 A14B
(two experts) pipelines, built offline.

Same conventions as :mod:`sadakit.testing.pipelines` and :mod:`sadakit.testing.video_pipelines`
(whose encoders, seeding and finishing helpers these reuse): weights from a forked RNG seeded
with ``seed``, every module in ``eval()``, progress bar off, no model hub.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sadakit.testing.pipelines import _check_size, _clip_text_encoder, _finish, _seeded, _umt5_encoder
from sadakit.testing.tokenizers import clip_tokenizer, clip_vocab, t5_tokenizer

if TYPE_CHECKING:
    from diffusers import HunyuanVideoPipeline, WanImageToVideoPipeline, WanPipeline

#: a short prompt template for the tiny Llama encoder (the pipeline's default is hundreds of
#: tokens long; with a byte-level tokenizer it would crop the prompt away). Pass it as
#: ``prompt_template=HUNYUAN_PROMPT_TEMPLATE``.
HUNYUAN_PROMPT_TEMPLATE = {"template": "user: {}", "crop_start": 6}


def _llama_encoder(hidden: int, layers: int = 3):
    """A tiny LlamaModel over :func:`clip_tokenizer`'s byte vocabulary (the pipeline reads the
    hidden states of the third layer from the end, so at least 2 layers)."""
    from transformers import LlamaConfig, LlamaModel

    vocab = clip_vocab()
    config = LlamaConfig(
        vocab_size=len(vocab), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
        bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    )
    return LlamaModel(config)


def tiny_hunyuan_video_pipeline(size: str = "tiny", seed: int = 0) -> "HunyuanVideoPipeline":
    """HunyuanVideo-shaped text-to-video pipeline (random weights, flow matching, guidance-distilled).

    The transformer has double-stream ``HunyuanVideoTransformerBlock``s and single-stream
    blocks (tiny: 1 + 1 of width 32; medium: 2 + 2 of width 64), patch 1 x 2 x 2, and embeds the
    guidance scale. The VAE compresses 8x in space and 4x in time: ``num_frames = 4k + 1``,
    sides multiples of 16; e.g. 9 frames of 48 x 64 px give a 3 x 6 x 8 latent, a 3 x 3 x 4
    token grid. Text: a tiny Llama (tokenized by a byte-level CLIP tokenizer, a fast tokenizer
    the pipeline accepts in place of LlamaTokenizerFast) plus a tiny CLIP for the pooled
    embedding. Call with ``prompt_template=HUNYUAN_PROMPT_TEMPLATE`` and
    ``max_sequence_length`` of 16 or so; true CFG with ``true_cfg_scale > 1`` and a
    ``negative_prompt`` (two transformer calls per step, in ``cache_context("cond"/"uncond")``).
    """
    from diffusers import (
        AutoencoderKLHunyuanVideo,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideoPipeline,
        HunyuanVideoTransformer3DModel,
    )

    _check_size(size)
    heads, head_dim, layers = (2, 16, 1) if size == "tiny" else (4, 16, 2)
    text_dim = 32
    with _seeded(seed):
        transformer = HunyuanVideoTransformer3DModel(
            in_channels=8, out_channels=8, num_attention_heads=heads, attention_head_dim=head_dim,
            num_layers=layers, num_single_layers=layers, num_refiner_layers=1, mlp_ratio=2.0, patch_size=2,
            patch_size_t=1, guidance_embeds=True, text_embed_dim=text_dim, pooled_projection_dim=text_dim,
            rope_axes_dim=(4, 6, 6),
        )
        vae = AutoencoderKLHunyuanVideo(
            latent_channels=8, block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=2,
            mid_block_add_attention=False,
        )
        text_encoder = _llama_encoder(text_dim)
        text_encoder_2 = _clip_text_encoder(text_dim)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=7.0)  # HunyuanVideo's own
    pipe = HunyuanVideoPipeline(text_encoder=text_encoder, tokenizer=clip_tokenizer(model_max_length=512),
                                transformer=transformer, vae=vae, scheduler=scheduler,
                                text_encoder_2=text_encoder_2, tokenizer_2=clip_tokenizer())
    return _finish(pipe)


def tiny_wan_i2v_pipeline(size: str = "tiny", seed: int = 0) -> "WanImageToVideoPipeline":
    """Wan 2.1 image-to-video-shaped pipeline (random weights, UniPC on flow sigmas).

    The transformer takes 16 noisy latent channels plus 20 condition channels (4 frame-mask
    channels and the 16-channel encoded first frame) that the pipeline concatenates to them,
    and predicts 16; it also receives ``encoder_hidden_states_image`` from a tiny CLIP vision
    encoder (32 x 32 input). Frames ``4k + 1``, sides multiples of 16.
    """
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanImageToVideoPipeline, WanTransformer3DModel
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    _check_size(size)
    heads, layers = (2, 2) if size == "tiny" else (4, 4)
    text_dim, image_dim = 32, 32
    with _seeded(seed):
        transformer = WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=16 if size == "tiny" else 32,
            in_channels=36, out_channels=16, text_dim=text_dim, freq_dim=64, ffn_dim=64 if size == "tiny" else 256,
            num_layers=layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
            image_dim=image_dim,
        )
        vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                               temperal_downsample=[False, True, True])
        text_encoder = _umt5_encoder(text_dim)
        image_encoder = CLIPVisionModel(CLIPVisionConfig(
            hidden_size=image_dim, intermediate_size=2 * image_dim, num_hidden_layers=2, num_attention_heads=4,
            image_size=32, patch_size=8, projection_dim=image_dim,
        ))
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    pipe = WanImageToVideoPipeline(tokenizer=t5_tokenizer(), text_encoder=text_encoder, vae=vae, scheduler=scheduler,
                                   image_processor=image_processor, image_encoder=image_encoder,
                                   transformer=transformer)
    return _finish(pipe)


def tiny_wan_experts_pipeline(size: str = "tiny", seed: int = 0, image_to_video: bool = False,
                              boundary_ratio: float = 0.875) -> "WanPipeline | WanImageToVideoPipeline":
    """Wan 2.2 A14B-shaped pipeline: two transformers of the same architecture and different
    weights, ``transformer`` for the steps with ``t >= boundary_ratio * 1000`` and the low-noise
    expert ``transformer_2`` after them (UniPC on flow sigmas, as Wan 2.2's own).

    ``image_to_video``: a ``WanImageToVideoPipeline`` whose transformers take 16 noisy + 20
    condition channels (no CLIP image encoder, as in Wan 2.2); otherwise a ``WanPipeline``.
    """
    from diffusers import (AutoencoderKLWan, UniPCMultistepScheduler, WanImageToVideoPipeline, WanPipeline,
                           WanTransformer3DModel)

    _check_size(size)
    heads, layers = (2, 2) if size == "tiny" else (4, 4)
    text_dim = 32

    def transformer() -> "WanTransformer3DModel":
        return WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=16 if size == "tiny" else 32,
            in_channels=36 if image_to_video else 16, out_channels=16, text_dim=text_dim, freq_dim=64,
            ffn_dim=64 if size == "tiny" else 256, num_layers=layers, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
        )

    with _seeded(seed):
        high_noise, low_noise = transformer(), transformer()
        vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                               temperal_downsample=[False, True, True])
        text_encoder = _umt5_encoder(text_dim)
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    parts = dict(tokenizer=t5_tokenizer(), text_encoder=text_encoder, transformer=high_noise, vae=vae,
                 scheduler=scheduler, transformer_2=low_noise, boundary_ratio=boundary_ratio)
    if image_to_video:
        pipe = WanImageToVideoPipeline(image_processor=None, image_encoder=None, **parts)
    else:
        pipe = WanPipeline(**parts)
    return _finish(pipe)


__all__ = ["HUNYUAN_PROMPT_TEMPLATE", "tiny_hunyuan_video_pipeline", "tiny_wan_experts_pipeline",
           "tiny_wan_i2v_pipeline"]
