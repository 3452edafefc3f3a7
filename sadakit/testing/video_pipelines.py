"""Tiny random-weight CogVideoX and LTX-Video text-to-video pipelines, built offline.

Why: the video plugins must be tested against diffusers' real pipeline code (CFG batched into
one call, the transformer's timestep, latent layouts, rotary tables), without a model hub.
Same conventions as :mod:`sadakit.testing.pipelines` (whose T5 encoder, seeding and finishing
helpers these reuse): weights from a forked RNG seeded with ``seed``, every module in
``eval()``, progress bar off. Sizes: ``"tiny"`` (2 blocks of width 128, ~1M parameters in
all; a 30-step CFG generation of a few frames at a small non-square size takes ~0.1 s on one
thread) and ``"medium"`` (4 blocks of width 256, 5-7M, for timing).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sadakit.testing.pipelines import _check_size, _finish, _seeded, _t5_encoder
from sadakit.testing.tokenizers import t5_tokenizer

if TYPE_CHECKING:
    from diffusers import CogVideoXPipeline, LTXPipeline

TEXT_DIM = 32  # the tiny T5 encoder's width


def tiny_cogvideox_pipeline(size: str = "tiny", seed: int = 0, patch_size_t: int | None = None,
                            scheduler: str = "ddim") -> "CogVideoXPipeline":
    """CogVideoX-shaped text-to-video pipeline (random weights, v-prediction on a VP schedule).

    The VAE compresses 8x in space and 4x in time: ``num_frames = 4k + 1``, sides multiples of
    16. Latents are (B, F, C, H, W); the transformer patchifies 2 x 2 (and ``patch_size_t``
    frames, CogVideoX 1.5 style, when given) with rotary embeddings on the video tokens (as
    CogVideoX-5B). E.g. 9 frames of 48 x 64 px: latent 3 x 6 x 8, token grid 3 x 3 x 4.
    ``scheduler``: ``"ddim"`` (CogVideoXDDIMScheduler, deterministic) or ``"dpm"``
    (CogVideoXDPMScheduler, stochastic: it adds noise from the call's generator every step),
    both in CogVideoX-5B's configuration (trailing spacing, zero terminal SNR, v-prediction).
    Prompts should use ``max_sequence_length`` of 16 or so: the text tokens join the attention.
    """
    from diffusers import (
        AutoencoderKLCogVideoX,
        CogVideoXDDIMScheduler,
        CogVideoXDPMScheduler,
        CogVideoXPipeline,
        CogVideoXTransformer3DModel,
    )

    _check_size(size)
    if scheduler not in ("ddim", "dpm"):
        raise ValueError(f"scheduler must be 'ddim' or 'dpm', got {scheduler!r}")
    heads, head_dim, layers = (4, 32, 2) if size == "tiny" else (8, 32, 4)
    with _seeded(seed):
        transformer = CogVideoXTransformer3DModel(
            num_attention_heads=heads, attention_head_dim=head_dim, in_channels=8, out_channels=8,
            time_embed_dim=heads * head_dim, text_embed_dim=TEXT_DIM, num_layers=layers,
            sample_width=8, sample_height=6, sample_frames=9, patch_size=2, patch_size_t=patch_size_t,
            temporal_compression_ratio=4, max_text_seq_length=16, use_rotary_positional_embeddings=True,
        )
        vae = AutoencoderKLCogVideoX(
            in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 4,
            up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), latent_channels=8,
            layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4,
        )
        text_encoder = _t5_encoder(TEXT_DIM)
    scheduler_class = CogVideoXDDIMScheduler if scheduler == "ddim" else CogVideoXDPMScheduler
    noise_schedule = scheduler_class(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False, set_alpha_to_one=True,
        prediction_type="v_prediction", rescale_betas_zero_snr=True, snr_shift_scale=1.0,
        timestep_spacing="trailing", steps_offset=0,
    )
    pipe = CogVideoXPipeline(tokenizer=t5_tokenizer(), text_encoder=text_encoder, vae=vae,
                             transformer=transformer, scheduler=noise_schedule)
    return _finish(pipe)


def tiny_ltx_pipeline(size: str = "tiny", seed: int = 0) -> "LTXPipeline":
    """LTX-Video-shaped text-to-video pipeline (random weights, flow matching).

    The VAE compresses 32x in space and 8x in time like the real one: ``num_frames = 8k + 1``,
    sides multiples of 32. The transformer works on packed latents (B, F * H * W, C), patch
    size 1, with a (cos, sin) rotary table per row. E.g. 17 frames of 96 x 128 px: latent
    3 x 3 x 4, 36 tokens. The scheduler is LTX-Video's FlowMatchEulerDiscreteScheduler config
    (resolution-dependent shift, terminal shift 0.1). Prompts should use ``max_sequence_length``
    of 16 or so.
    """
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXPipeline,
        LTXVideoTransformer3DModel,
    )

    _check_size(size)
    heads, head_dim, layers = (4, 32, 2) if size == "tiny" else (8, 32, 4)
    with _seeded(seed):
        transformer = LTXVideoTransformer3DModel(
            in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=heads,
            attention_head_dim=head_dim, cross_attention_dim=heads * head_dim, num_layers=layers,
            caption_channels=TEXT_DIM,
        )
        vae = AutoencoderKLLTXVideo(
            in_channels=3, out_channels=3, latent_channels=8, block_out_channels=(8, 8, 8, 8),
            decoder_block_out_channels=(8, 8, 8, 8), layers_per_block=(1, 1, 1, 1, 1),
            decoder_layers_per_block=(1, 1, 1, 1, 1), spatio_temporal_scaling=(True, True, True, False),
            decoder_spatio_temporal_scaling=(True, True, True, False), decoder_inject_noise=(False,) * 5,
            upsample_residual=(False,) * 4, upsample_factor=(1,) * 4, timestep_conditioning=False,
            patch_size=4, patch_size_t=1, encoder_causal=True, decoder_causal=False,
        )
        text_encoder = _t5_encoder(TEXT_DIM)
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05,
        base_image_seq_len=1024, max_image_seq_len=4096, shift_terminal=0.1,
    )
    pipe = LTXPipeline(tokenizer=t5_tokenizer(), text_encoder=text_encoder, vae=vae, transformer=transformer,
                       scheduler=scheduler)
    return _finish(pipe)


__all__ = ["tiny_cogvideox_pipeline", "tiny_ltx_pipeline"]
