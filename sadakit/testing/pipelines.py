"""Tiny random-weight pipelines of the real diffusers classes, built offline.

Why: no machine here has a GPU or reaches a model hub, yet the plugins must be tested
against the real pipeline code (its denoiser calls, CFG batching, token layouts,
``save_pretrained`` / ``from_pretrained``). These builders assemble the real classes
from configs with locally built tokenizers.

Two sizes:

* ``"tiny"``: ~1-2M parameters in the denoiser, 64x64 px images: a 4-step generation
  takes a fraction of a second. For correctness tests; overhead-dominated, so useless
  for speed ratios.
* ``"medium"``: compute-dominated on a 2-core CPU (~100-200 ms per denoiser call at
  256x256 px / 5 s of audio), so speed-ups measured on it mean something.

Weights are drawn from ``torch.manual_seed(seed)`` inside a forked RNG, so the same seed
gives bit-identical weights and the caller's global RNG is left untouched. Every
component is in ``eval()`` mode (dropout off) and the progress bar is disabled.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    DDIMScheduler,
    DiffusionPipeline,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxControlNetModel,
    FluxControlNetPipeline,
    FluxMultiControlNetModel,
    FluxPipeline,
    FluxTransformer2DModel,
    MultiControlNetModel,
    StableDiffusionControlNetPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLControlNetPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from torch import nn
from transformers import (
    ClapConfig,
    ClapFeatureExtractor,
    ClapModel,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    SpeechT5HifiGan,
    SpeechT5HifiGanConfig,
    T5Config,
    T5EncoderModel,
)

from sadakit.testing.tokenizers import (
    clip_tokenizer,
    clip_vocab,
    roberta_tokenizer,
    roberta_vocab,
    t5_tokenizer,
    t5_vocab,
)

if TYPE_CHECKING:
    from diffusers import MusicLDMPipeline, WanPipeline
    from transformers import UMT5EncoderModel

SIZES = ("tiny", "medium")

# Relative std of the re-initialised ControlNet output projections (1.0 would make the
# control residuals as large as the features they are added to).
CONTROL_INIT_GAIN = 0.5
# Std of the conditioning embedding's output on a control-like image: about that of
# the UNet's conv_in features it is added to (~0.5 on unit-variance latents).
CONTROL_EMBEDDING_STD = 0.5


# --------------------------------------------------------------------------- helpers


def _check_size(size: str) -> None:
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed weight initialisation without disturbing the caller's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _finish(pipe: DiffusionPipeline) -> DiffusionPipeline:
    """Put every module in eval mode (T5/CLAP dropout) and silence the progress bar."""
    for component in pipe.components.values():
        if isinstance(component, nn.Module):
            component.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _clip_config(hidden: int, layers: int, projection_dim: int | None = None) -> CLIPTextConfig:
    """CLIP text config matching :func:`clip_tokenizer` (eos id must be the real one)."""
    vocab = clip_vocab()
    return CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=projection_dim or hidden,
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
        hidden_act="gelu",
    )


def _clip_text_encoder(hidden: int, layers: int = 2) -> CLIPTextModel:
    return CLIPTextModel(_clip_config(hidden, layers))


def _clip_text_encoder_with_projection(hidden: int, projection_dim: int, layers: int = 2) -> CLIPTextModelWithProjection:
    return CLIPTextModelWithProjection(_clip_config(hidden, layers, projection_dim))


def _t5_encoder(d_model: int, layers: int = 2) -> T5EncoderModel:
    config = T5Config(
        vocab_size=len(t5_vocab()),
        d_model=d_model,
        d_kv=d_model // 4,
        d_ff=2 * d_model,
        num_layers=layers,
        num_heads=4,
        relative_attention_num_buckets=8,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return T5EncoderModel(config)


def _image_vae(latent_channels: int = 4, **config: Any) -> AutoencoderKL:
    """A small 8x-downsampling VAE: four stages like the real SD/SDXL/Flux VAEs."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(16, 16, 32, 32),
        layers_per_block=1,
        norm_num_groups=8,
        latent_channels=latent_channels,
        sample_size=64,
        **config,
    )


def _vp_scheduler(prediction_type: str = "epsilon") -> EulerDiscreteScheduler:
    """The SD / SDXL training schedule (scaled-linear betas) with an Euler solver."""
    if prediction_type not in ("epsilon", "v_prediction"):
        raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction', got {prediction_type!r}")
    return EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type=prediction_type,
        timestep_spacing="leading",
        steps_offset=1,
    )


def _flow_scheduler() -> FlowMatchEulerDiscreteScheduler:
    """The FLUX.1-dev scheduler config (resolution-dependent shift)."""
    return FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )


# ----------------------------------------------------------------------- UNet configs


def _sd_unet(size: str, cross_attention_dim: int) -> UNet2DConditionModel:
    """SD-1/2 layout: cross-attention at every level but the coarsest (medium)."""
    if size == "tiny":
        levels = dict(
            block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            attention_head_dim=4,
            sample_size=8,
        )
    else:
        levels = dict(
            block_out_channels=(64, 128, 256),
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            attention_head_dim=8,
            sample_size=32,
        )
    return UNet2DConditionModel(
        in_channels=4,
        out_channels=4,
        layers_per_block=2 if size == "medium" else 1,
        cross_attention_dim=cross_attention_dim,
        norm_num_groups=32,
        **levels,
    )


def _sdxl_unet(size: str, cross_attention_dim: int, pooled_dim: int) -> UNet2DConditionModel:
    """SDXL layout: micro-conditioning (text_time), no attention at the finest level (medium)."""
    time_dim = 8 if size == "tiny" else 32
    if size == "tiny":
        levels = dict(
            block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            transformer_layers_per_block=(1, 1),
            attention_head_dim=(2, 4),
            layers_per_block=1,
            sample_size=8,
        )
    else:
        levels = dict(
            block_out_channels=(64, 128, 256),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 2),
            attention_head_dim=(2, 4, 8),
            layers_per_block=2,
            sample_size=32,
        )
    return UNet2DConditionModel(
        in_channels=4,
        out_channels=4,
        cross_attention_dim=cross_attention_dim,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=6 * time_dim + pooled_dim,
        norm_num_groups=32,
        **levels,
    )


def _musicldm_unet(size: str, class_dim: int) -> UNet2DConditionModel:
    """MusicLDM/AudioLDM layout: the CLAP embedding enters as a class label, concatenated
    to the time embedding; the "cross"-attention blocks attend to themselves (no text
    tokens), so each level's cross_attention_dim equals its width."""
    if size == "tiny":
        widths = (32, 64)
        down = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
        up = ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D")
        layers, heads, sample = 1, 4, 16
    else:
        widths = (64, 128, 192)
        down = ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
        up = ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")
        layers, heads, sample = 2, 8, 128
    return UNet2DConditionModel(
        sample_size=sample,
        in_channels=8,
        out_channels=8,
        block_out_channels=widths,
        layers_per_block=layers,
        down_block_types=down,
        up_block_types=up,
        cross_attention_dim=widths,
        attention_head_dim=heads,
        norm_num_groups=32,
        class_embed_type="simple_projection",
        projection_class_embeddings_input_dim=class_dim,
        class_embeddings_concat=True,
    )


def _flux_transformer(size: str, text_dim: int, pooled_dim: int, guidance_embeds: bool) -> FluxTransformer2DModel:
    """Flux DiT; the rope axes (text index, row, column) sum to attention_head_dim."""
    if size == "tiny":
        shape = dict(num_layers=2, num_single_layers=2, attention_head_dim=16, num_attention_heads=4, axes_dims_rope=(4, 6, 6))
    else:
        shape = dict(num_layers=2, num_single_layers=6, attention_head_dim=64, num_attention_heads=6, axes_dims_rope=(16, 24, 24))
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        joint_attention_dim=text_dim,
        pooled_projection_dim=pooled_dim,
        guidance_embeds=guidance_embeds,
        **shape,
    )


# ------------------------------------------------------------------- ControlNet init


def _normal_(layer: nn.Conv2d | nn.Linear, gain: float) -> None:
    """Normal init with std ``gain / sqrt(fan_in)``; bias zero."""
    fan_in = layer.weight[0].numel()
    nn.init.normal_(layer.weight, std=gain / math.sqrt(fan_in))
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


def control_probe(channels: int = 3, height: int = 64, width: int = 64) -> torch.Tensor:
    """A fixed control-like image in [0, 1]: a lit square, a stripe and a smooth ramp.

    Used to calibrate the conditioning embedding on input that looks like real control
    maps (sparse, piecewise constant), deterministically and without any RNG.
    """
    ys = torch.linspace(0.0, 1.0, height).view(-1, 1)
    xs = torch.linspace(0.0, 1.0, width).view(1, -1)
    image = 0.5 * ys * xs
    image = torch.where((ys - 0.5).abs().lt(0.2) & (xs - 0.4).abs().lt(0.2), torch.ones_like(image), image)
    image = torch.where((xs - 0.85).abs().lt(0.05), torch.ones_like(image), image)
    return image.expand(1, channels, height, width).contiguous()


@torch.no_grad()
def _unit_variance_(embedding: nn.Module, probe: torch.Tensor, out_std: float) -> None:
    """LSUV-style init of a ControlNet conditioning embedding (conv -> SiLU chain).

    Each conv gets a normal init, then is rescaled so its output on ``probe`` has unit
    std (``out_std`` for conv_out). Plain fan-in scaling is not enough: with 8-16
    channels the chain's gain varies ~20x between random draws.
    """
    x = probe
    convs = [embedding.conv_in, *embedding.blocks, embedding.conv_out]
    for i, conv in enumerate(convs):
        _normal_(conv, 1.0)
        y = conv(x)
        target = out_std if conv is embedding.conv_out else 1.0
        conv.weight.mul_(target / y.std().clamp_min(1e-12))
        if i < len(convs) - 1:
            x = torch.nn.functional.silu(conv(x))


def activate_controlnet(controlnet: ControlNetModel | FluxControlNetModel, gain: float = CONTROL_INIT_GAIN) -> None:
    """Give a random ControlNet a real effect on the denoiser.

    A fresh ControlNet starts with zero output projections ("zero convolutions"), so
    with random weights it adds exactly nothing and any test of the control branch
    would prove nothing. Here the output projections get a normal init (std
    ``gain / sqrt(fan_in)``) and the conditioning embedding a variance-preserving one
    (see :func:`_unit_variance_`), so the control image reaches the residuals at a
    measurable scale. (Flux has no embedding: its control image is VAE-encoded.)
    """
    if isinstance(controlnet, FluxControlNetModel):
        _normal_(controlnet.controlnet_x_embedder, 1.0)
        for layer in [*controlnet.controlnet_blocks, *controlnet.controlnet_single_blocks]:
            _normal_(layer, gain)
        return
    embedding = controlnet.controlnet_cond_embedding
    probe = control_probe(embedding.conv_in.in_channels)
    _unit_variance_(embedding, probe, out_std=CONTROL_EMBEDDING_STD)
    for conv in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
        _normal_(conv, gain)


def _unet_controlnets(unet: UNet2DConditionModel, size: str, count: int) -> ControlNetModel | MultiControlNetModel:
    """ControlNets initialised from the UNet (as real ControlNet training starts), then activated."""
    if count < 1:
        raise ValueError(f"num_controlnets must be >= 1, got {count}")
    channels = (8, 16, 32, 64) if size == "tiny" else (16, 32, 96, 256)
    nets = []
    for _ in range(count):
        net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=channels)
        activate_controlnet(net)
        nets.append(net)
    return nets[0] if count == 1 else MultiControlNetModel(nets)


# --------------------------------------------------------------------------- builders


def tiny_sd_pipeline(size: str = "tiny", seed: int = 0, prediction_type: str = "epsilon") -> StableDiffusionPipeline:
    """Stable Diffusion 1.x/2.x-shaped pipeline (CLIP text encoder, Euler, VP schedule).

    Sizes: image sides must be multiples of 16 (tiny, default 64x64) or 32 (medium,
    default 256x256). ``prediction_type="v_prediction"`` mimics SD-2-768.
    """
    _check_size(size)
    hidden = 32 if size == "tiny" else 64
    with _seeded(seed):
        text_encoder = _clip_text_encoder(hidden)
        unet = _sd_unet(size, cross_attention_dim=hidden)
        vae = _image_vae(scaling_factor=0.18215)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(),
        unet=unet,
        scheduler=_vp_scheduler(prediction_type),
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )
    return _finish(pipe)


def _sdxl_parts(size: str) -> dict[str, Any]:
    """Two CLIP encoders (the second with projection) and an SDXL UNet; call seeded."""
    hidden = 32 if size == "tiny" else 64
    text_encoder = _clip_text_encoder(hidden)
    text_encoder_2 = _clip_text_encoder_with_projection(hidden, projection_dim=hidden)
    unet = _sdxl_unet(size, cross_attention_dim=2 * hidden, pooled_dim=hidden)
    vae = _image_vae(scaling_factor=0.13025)
    return dict(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=clip_tokenizer(),
        tokenizer_2=clip_tokenizer(),
        unet=unet,
        scheduler=_vp_scheduler(),
    )


def tiny_sdxl_pipeline(size: str = "tiny", seed: int = 0) -> StableDiffusionXLPipeline:
    """SDXL-shaped pipeline: two CLIP encoders, text_time micro-conditioning, Euler.

    Sizes: image sides multiples of 16 (tiny, default 64x64; non-square like 64x96 is
    fine) or 32 (medium, default 256x256). The medium UNet (64/128/256, ~33M params)
    takes ~180 ms per call at 256x256 on a 2-core CPU.
    """
    _check_size(size)
    with _seeded(seed):
        parts = _sdxl_parts(size)
    pipe = StableDiffusionXLPipeline(**parts, force_zeros_for_empty_prompt=True, add_watermarker=False)
    return _finish(pipe)


def _flux_parts(size: str, guidance_embeds: bool) -> dict[str, Any]:
    """CLIP (pooled) + T5 (sequence) encoders, a Flux DiT and a 16-channel VAE; call seeded."""
    clip_hidden, t5_dim = (32, 32) if size == "tiny" else (64, 64)
    text_encoder = _clip_text_encoder(clip_hidden)
    text_encoder_2 = _t5_encoder(t5_dim)
    transformer = _flux_transformer(size, text_dim=t5_dim, pooled_dim=clip_hidden, guidance_embeds=guidance_embeds)
    vae = _image_vae(
        latent_channels=16,
        use_quant_conv=False,
        use_post_quant_conv=False,
        scaling_factor=0.3611,
        shift_factor=0.1159,
    )
    return dict(
        scheduler=_flow_scheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(),
        text_encoder_2=text_encoder_2,
        tokenizer_2=t5_tokenizer(),
        transformer=transformer,
    )


def tiny_flux_pipeline(size: str = "tiny", seed: int = 0, guidance_embeds: bool = True) -> FluxPipeline:
    """FLUX.1-dev-shaped pipeline (guidance-distilled unless ``guidance_embeds=False``).

    Sizes: image sides multiples of 16 (default 64x64 tiny, 256x256 medium). Pass a
    small ``max_sequence_length`` (e.g. 32; default 512) to keep the T5 text short.
    Classifier-free guidance is ``true_cfg_scale > 1`` with a ``negative_prompt``.
    Tiny: 2 double + 2 single blocks, width 64; medium: 2 double + 6 single, width 384 (~25M).
    """
    _check_size(size)
    with _seeded(seed):
        parts = _flux_parts(size, guidance_embeds)
    return _finish(FluxPipeline(**parts))


def tiny_sd_controlnet_pipeline(
    size: str = "tiny", seed: int = 0, num_controlnets: int = 1, prediction_type: str = "epsilon"
) -> StableDiffusionControlNetPipeline:
    """SD ControlNet pipeline; ``num_controlnets > 1`` gives a MultiControlNetModel.

    The ControlNets are activated (see :func:`activate_controlnet`). Sizes as
    :func:`tiny_sd_pipeline`; the control image has the output image's size.
    """
    _check_size(size)
    hidden = 32 if size == "tiny" else 64
    with _seeded(seed):
        text_encoder = _clip_text_encoder(hidden)
        unet = _sd_unet(size, cross_attention_dim=hidden)
        vae = _image_vae(scaling_factor=0.18215)
        controlnet = _unet_controlnets(unet, size, num_controlnets)
    pipe = StableDiffusionControlNetPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(),
        unet=unet,
        controlnet=controlnet,
        scheduler=_vp_scheduler(prediction_type),
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )
    return _finish(pipe)


def tiny_sdxl_controlnet_pipeline(
    size: str = "tiny", seed: int = 0, num_controlnets: int = 1
) -> StableDiffusionXLControlNetPipeline:
    """SDXL ControlNet pipeline; ``num_controlnets > 1`` gives a MultiControlNetModel.

    Sizes as :func:`tiny_sdxl_pipeline` (non-square fine); the control image has the
    output image's size. Medium: ~140 ms per network call at 256x256.
    """
    _check_size(size)
    with _seeded(seed):
        parts = _sdxl_parts(size)
        controlnet = _unet_controlnets(parts["unet"], size, num_controlnets)
    pipe = StableDiffusionXLControlNetPipeline(
        **parts, controlnet=controlnet, force_zeros_for_empty_prompt=True, add_watermarker=False
    )
    return _finish(pipe)


def _flux_controlnets(transformer: FluxTransformer2DModel, count: int) -> FluxControlNetModel | FluxMultiControlNetModel:
    """InstantX-style Flux ControlNets (control image VAE-encoded, no hint block)."""
    if count < 1:
        raise ValueError(f"num_controlnets must be >= 1, got {count}")
    config = transformer.config
    nets = []
    for _ in range(count):
        net = FluxControlNetModel.from_transformer(
            transformer,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=config.attention_head_dim,
            num_attention_heads=config.num_attention_heads,
        )
        activate_controlnet(net)
        nets.append(net)
    return nets[0] if count == 1 else FluxMultiControlNetModel(nets)


def tiny_flux_controlnet_pipeline(
    size: str = "tiny", seed: int = 0, num_controlnets: int = 1, guidance_embeds: bool = True
) -> FluxControlNetPipeline:
    """Flux ControlNet pipeline (1 double + 1 single control block, initialised from the
    transformer); ``num_controlnets > 1`` gives a FluxMultiControlNetModel.

    Sizes as :func:`tiny_flux_pipeline`; the control image has the output image's size.
    With several ControlNets, diffusers wants ``controlnet_conditioning_scale`` as a list.
    """
    _check_size(size)
    with _seeded(seed):
        parts = _flux_parts(size, guidance_embeds)
        controlnet = _flux_controlnets(parts["transformer"], num_controlnets)
    return _finish(FluxControlNetPipeline(**parts, controlnet=controlnet))


def _clap_text_model(size: str, max_length: int) -> ClapModel:
    """A CLAP model whose text branch matches :func:`roberta_tokenizer`.

    Roberta positions start at ``pad_id + 1``, hence ``max_length + 2`` positions. The
    audio branch is minimal: MusicLDM only uses it to rank several waveforms per prompt.
    """
    hidden = 32 if size == "tiny" else 64
    text_config = dict(
        vocab_size=len(roberta_vocab()),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=max_length + 2,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        layer_norm_eps=1e-5,
    )
    audio_config = dict(
        spec_size=64,
        window_size=4,
        num_mel_bins=64,
        depths=(1, 1),
        num_attention_heads=(2, 2),
        patch_embeds_hidden_size=16,
        hidden_size=32,
        patch_size=2,
        patch_stride=2,
        patch_embed_input_channels=4,
        num_hidden_layers=2,
    )
    return ClapModel(ClapConfig(text_config=text_config, audio_config=audio_config, projection_dim=hidden))


def _vocoder(size: str) -> SpeechT5HifiGan:
    """16 kHz HiFi-GAN over 64 mel bins, hop 160 (100 frames/s) as in MusicLDM.

    ``initializer_range=0.2``: the default 0.01 gives near-silence (std ~1e-11).
    """
    config = SpeechT5HifiGanConfig(
        model_in_dim=64,
        sampling_rate=16000,
        upsample_initial_channel=32 if size == "tiny" else 128,
        upsample_rates=(5, 4, 2, 2, 2),
        upsample_kernel_sizes=(16, 16, 8, 4, 4),
        resblock_kernel_sizes=(3, 7),
        resblock_dilation_sizes=((1, 3, 5), (1, 3, 5)),
        normalize_before=False,
        initializer_range=0.2,
    )
    return SpeechT5HifiGan(config)


def _spectrogram_vae() -> AutoencoderKL:
    """4x-downsampling mel VAE, 8 latent channels: 64 mel bins -> 16 latent bins."""
    return AutoencoderKL(
        in_channels=1,
        out_channels=1,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 16, 32),
        layers_per_block=1,
        norm_num_groups=8,
        latent_channels=8,
        sample_size=64,
        scaling_factor=0.18215,
    )


def tiny_musicldm_pipeline(size: str = "tiny", seed: int = 0) -> "MusicLDMPipeline":
    """MusicLDM pipeline: CLAP text embedding -> class-conditioned UNet -> mel VAE -> HiFi-GAN.

    Latents are (B, 8, T, 16) with T = seconds * 100 / 4; ``audio_length_in_s`` should be
    a multiple of 0.08 s (tiny) or 0.16 s (medium) so T divides by the UNet's
    downsampling. Default length: 0.64 s (tiny), 5.12 s (medium).

    Not usable as is with transformers >= 5: call
    :func:`sadakit.plugins.audio.compat.ensure_musicldm_compat` first. The builder does
    not apply it, so that it returns what users' own pipelines look like.
    """
    from diffusers import MusicLDMPipeline  # deprecated module; import only when asked

    _check_size(size)
    max_length = 77
    with _seeded(seed):
        text_encoder = _clap_text_model(size, max_length)
        unet = _musicldm_unet(size, class_dim=text_encoder.config.projection_dim)
        vae = _spectrogram_vae()
        vocoder = _vocoder(size)
    pipe = MusicLDMPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=roberta_tokenizer(max_length),
        feature_extractor=ClapFeatureExtractor(),
        unet=unet,
        scheduler=_musicldm_scheduler(),
        vocoder=vocoder,
    )
    return _finish(pipe)


def _musicldm_scheduler() -> DDIMScheduler:
    """The scheduler MusicLDM ships with (DDIM, scaled-linear betas 0.0015-0.0195)."""
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.0015,
        beta_end=0.0195,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def _umt5_encoder(d_model: int, layers: int = 2) -> "UMT5EncoderModel":
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(
        vocab_size=len(t5_vocab()), d_model=d_model, d_kv=d_model // 4, d_ff=2 * d_model, num_layers=layers,
        num_heads=4, relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )
    return UMT5EncoderModel(config)


def tiny_wan_pipeline(size: str = "tiny", seed: int = 0) -> "WanPipeline":
    """Wan 2.1-shaped text-to-video pipeline (random weights, UniPC on flow sigmas).

    Tiny: 2 blocks of width 32 (2 heads of 16); medium: 4 blocks of width 128. Frames
    ``4k + 1`` (the VAE compresses time 4x), sides multiples of 16; e.g. 9 frames of 32x32
    give a 3 x 4 x 4 token grid. CFG (guidance_scale > 1) calls the transformer twice per step.
    """
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel

    _check_size(size)
    heads, layers = (2, 2) if size == "tiny" else (4, 4)
    text_dim = 32
    with _seeded(seed):
        transformer = WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=16 if size == "tiny" else 32,
            in_channels=16, out_channels=16, text_dim=text_dim, freq_dim=64, ffn_dim=64 if size == "tiny" else 256,
            num_layers=layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
        )
        vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                               temperal_downsample=[False, True, True])
        text_encoder = _umt5_encoder(text_dim)
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    pipe = WanPipeline(tokenizer=t5_tokenizer(), text_encoder=text_encoder, transformer=transformer, vae=vae,
                       scheduler=scheduler)
    return _finish(pipe)
