"""Tiny random-weight AudioLDM and AudioLDM2 pipelines, built offline (MusicLDM: see ``pipelines``).

Why: the audio plugin claims these families, so their real pipeline classes must be exercised
(AudioLDM's CLAP projection model, AudioLDM2's GPT-2 + T5 conditioning and its own UNet class)
without a hub. Same conventions as :mod:`sadakit.testing.pipelines`: seeded forked RNG, eval
mode, progress bar off, 16 kHz HiFi-GAN, (B, 8, T, 16) latents with T = seconds * 25.
"""

from __future__ import annotations

from typing import Any

from sadakit.testing import pipelines as _p
from sadakit.testing.tokenizers import roberta_tokenizer, roberta_vocab, t5_tokenizer

_MAX_LENGTH = 77


def tiny_audioldm_pipeline(seed: int = 0) -> Any:
    """AudioLDM: CLAP text projection -> class-conditioned UNet (MusicLDM's layout) -> mel VAE -> HiFi-GAN."""
    from diffusers import AudioLDMPipeline  # deprecated module; import only when asked
    from transformers import ClapTextConfig, ClapTextModelWithProjection

    with _p._seeded(seed):
        text_encoder = ClapTextModelWithProjection(
            ClapTextConfig(
                vocab_size=len(roberta_vocab()),
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=_MAX_LENGTH + 2,
                pad_token_id=1,
                bos_token_id=0,
                eos_token_id=2,
                projection_dim=32,
            )
        )
        unet = _p._musicldm_unet("tiny", class_dim=32)
        vae, vocoder = _p._spectrogram_vae(), _p._vocoder("tiny")
    pipe = AudioLDMPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=roberta_tokenizer(_MAX_LENGTH),
        unet=unet,
        scheduler=_p._musicldm_scheduler(),
        vocoder=vocoder,
    )
    return _p._finish(pipe)


def tiny_audioldm2_pipeline(seed: int = 0) -> Any:
    """AudioLDM2: CLAP + T5 -> projection -> GPT-2 (8 generated embeddings) -> two-stream UNet."""
    from diffusers import AudioLDM2Pipeline, AudioLDM2ProjectionModel, AudioLDM2UNet2DConditionModel
    from transformers import ClapFeatureExtractor, GPT2Config, GPT2LMHeadModel

    with _p._seeded(seed):
        clap = _p._clap_text_model("tiny", _MAX_LENGTH)
        t5 = _p._t5_encoder(32)
        projection = AudioLDM2ProjectionModel(text_encoder_dim=32, text_encoder_1_dim=32, langauge_model_dim=16)
        language_model = GPT2LMHeadModel(
            GPT2Config(n_embd=16, n_head=2, n_layer=2, vocab_size=64, n_ctx=99, n_positions=99)
        )
        language_model.config.max_new_tokens = 8
        unet = AudioLDM2UNet2DConditionModel(
            sample_size=16,
            in_channels=8,
            out_channels=8,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            # per level: self-attention, GPT-2 stream (16), T5 stream (32)
            cross_attention_dim=([None, 16, 32], [None, 16, 32]),
            attention_head_dim=4,
            norm_num_groups=32,
        )
        vae, vocoder = _p._spectrogram_vae(), _p._vocoder("tiny")
    pipe = AudioLDM2Pipeline(
        vae=vae,
        text_encoder=clap,
        text_encoder_2=t5,
        projection_model=projection,
        language_model=language_model,
        tokenizer=roberta_tokenizer(_MAX_LENGTH),
        tokenizer_2=t5_tokenizer(),
        feature_extractor=ClapFeatureExtractor(),
        unet=unet,
        scheduler=_p._musicldm_scheduler(),
        vocoder=vocoder,
    )
    return _p._finish(pipe)
