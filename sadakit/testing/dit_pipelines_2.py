"""Tiny offline DiT pipelines, part 2: Stable Audio Open (``StableAudioPipeline``) and
Qwen-Image (``QwenImagePipeline``).

Random weights from a seed, built from configs only (no model hub), with the local tokenizers
of :mod:`sadakit.testing.tokenizers` and the shared encoders of :mod:`sadakit.testing.pipelines`.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from typing import Any

import torch
from diffusers import (
    AutoencoderKLQwenImage,
    AutoencoderOobleck,
    FlowMatchEulerDiscreteScheduler,
    QwenImagePipeline,
    QwenImageTransformer2DModel,
    StableAudioDiTModel,
    StableAudioPipeline,
    StableAudioProjectionModel,
)

from sadakit.testing.pipelines import _finish, _seeded, _t5_encoder
from sadakit.testing.tokenizers import t5_tokenizer



def _cosine_dpm_solver_class() -> type:
    """diffusers' real ``CosineDPMSolverMultistepScheduler`` class, importable without torchsde.

    The scheduler needs torchsde only for its Brownian-tree noise sampler; when torchsde is not
    installed, a placeholder module lets the scheduler's module import and is then taken out of
    ``sys.modules`` again (the placeholder raises
    if the Brownian tree is ever built, which :class:`GaussianCosineDPMSolverMultistepScheduler`
    never does).
    """
    placed = False
    if "torchsde" not in sys.modules and importlib.util.find_spec("torchsde") is None:
        placed = True
        placeholder = types.ModuleType("torchsde")

        def _missing(*args: Any, **kwargs: Any) -> Any:
            raise ImportError("torchsde is not installed (sadakit.testing placeholder)")

        placeholder.BrownianInterval = _missing  # type: ignore[attr-defined]
        placeholder.BrownianTree = _missing  # type: ignore[attr-defined]
        placeholder.__sadakit_placeholder__ = True  # type: ignore[attr-defined]
        sys.modules["torchsde"] = placeholder
    try:
        from diffusers.schedulers.scheduling_cosine_dpmsolver_multistep import CosineDPMSolverMultistepScheduler
    finally:
        if placed:  # the scheduler's module keeps its reference; nobody else sees a fake torchsde
            sys.modules.pop("torchsde", None)

    return CosineDPMSolverMultistepScheduler


class _GaussianNoiseSampler:
    """Independent standard-normal noise per step (what a Brownian tree gives for the
    non-overlapping intervals of one sampling run), from a seeded CPU generator."""

    def __init__(self, like: torch.Tensor, seed: int | None) -> None:
        self.like = like
        self.generator = torch.Generator().manual_seed(seed if seed is not None else torch.initial_seed())

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        return torch.randn(self.like.shape, generator=self.generator, dtype=torch.float32).to(self.like.dtype)


def cosine_dpm_solver(**config: Any) -> Any:
    """A ``CosineDPMSolverMultistepScheduler`` (Stable Audio's scheduler, the real class and its
    precondition / solver code) whose step noise comes from a seeded Gaussian instead of
    torchsde's Brownian tree, so it runs where torchsde is not installed."""
    base = _cosine_dpm_solver_class()

    class GaussianCosineDPMSolverMultistepScheduler(base):  # type: ignore[misc, valid-type]
        def step(self, model_output, timestep, sample, generator=None, return_dict=True):
            if self.noise_sampler is None:
                seed = generator.initial_seed() if isinstance(generator, torch.Generator) else None
                self.noise_sampler = _GaussianNoiseSampler(model_output, seed)
            return super().step(model_output, timestep, sample, generator=generator, return_dict=return_dict)

    return GaussianCosineDPMSolverMultistepScheduler(**config)


#: tiny Stable Audio: latent length (transformer ``sample_size``) and the VAE's sampling rate,
#: chosen so that one second of audio is the whole latent (32 latent steps, hop 4)
STABLE_AUDIO_LATENT_LENGTH = 32
STABLE_AUDIO_SAMPLING_RATE = 128


def tiny_stable_audio_pipeline(seed: int = 0) -> StableAudioPipeline:
    """Stable-Audio-Open-shaped pipeline: a T5 (width 32, text up to 16 tokens), the projection
    model with its two seconds conditioners, a ``StableAudioDiTModel`` of 2 blocks (width 64,
    4 query / 2 key-value heads, rotary on half the head width), a stereo ``AutoencoderOobleck``
    of hop 4 with 8 latent channels, and ``CosineDPMSolverMultistepScheduler`` with the real
    model's settings (sigma 0.3..500, sigma_data 1, v-prediction, second order; :func:`cosine_dpm_solver`: step noise
    from a seeded Gaussian, torchsde not needed).

    The latent is (B, 8, 32); ``audio_end_in_s=1.0`` (the default) fills it. CFG
    (guidance_scale > 1, the default 7) is one batched call per step, rows [uncond, cond].
    """
    text_dim, cond_dim = 32, 32
    with _seeded(seed):
        text_encoder = _t5_encoder(text_dim)
        projection_model = StableAudioProjectionModel(text_encoder_dim=text_dim, conditioning_dim=cond_dim,
                                                      min_value=0, max_value=512)
        transformer = StableAudioDiTModel(
            sample_size=STABLE_AUDIO_LATENT_LENGTH, in_channels=8, out_channels=8, num_layers=2,
            attention_head_dim=16, num_attention_heads=4, num_key_value_attention_heads=2,
            cross_attention_dim=64, time_proj_dim=32, global_states_input_dim=2 * cond_dim,
            cross_attention_input_dim=cond_dim,
        )
        vae = AutoencoderOobleck(encoder_hidden_size=8, downsampling_ratios=[2, 2], channel_multiples=[1, 2],
                                 decoder_channels=8, decoder_input_channels=8, audio_channels=2,
                                 sampling_rate=STABLE_AUDIO_SAMPLING_RATE)
    scheduler = cosine_dpm_solver(sigma_min=0.3, sigma_max=500, sigma_data=1.0,
                                                  sigma_schedule="exponential", solver_order=2,
                                                  prediction_type="v_prediction", rho=7.0)
    pipe = StableAudioPipeline(vae=vae, text_encoder=text_encoder, projection_model=projection_model,
                               tokenizer=t5_tokenizer(model_max_length=16), transformer=transformer,
                               scheduler=scheduler)
    return _finish(pipe)


#: width of the tiny Qwen-Image's text embeddings (``joint_attention_dim``)
QWEN_IMAGE_TEXT_DIM = 32


def tiny_qwen_image_pipeline(seed: int = 0) -> QwenImagePipeline:
    """Qwen-Image-shaped pipeline *without a text encoder*: ``text_encoder=None`` and
    ``tokenizer=None`` (a tiny Qwen2.5-VL is not built here); call it with ``prompt_embeds`` /
    ``prompt_embeds_mask`` (and ``negative_prompt_embeds`` / ``negative_prompt_embeds_mask``
    for true CFG), e.g. from :func:`qwen_image_text`.

    Transformer: 2 ``QwenImageTransformerBlock``s of width 64 (4 heads of 16), rope axes
    (4, 6, 6), on packed 2x2 latents (64 channels); ``AutoencoderKLQwenImage`` of base width 8
    (8x spatial, 16 latent channels); the real scheduler config (dynamic shift). Image sides
    multiples of 16, e.g. 64x96 px: a 4 x 6 token grid.
    """
    with _seeded(seed):
        transformer = QwenImageTransformer2DModel(patch_size=2, in_channels=64, out_channels=16, num_layers=2,
                                                  attention_head_dim=16, num_attention_heads=4,
                                                  joint_attention_dim=QWEN_IMAGE_TEXT_DIM, axes_dims_rope=(4, 6, 6))
        vae = AutoencoderKLQwenImage(base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                                     temperal_downsample=[False, True, True])
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9,
        base_image_seq_len=256, max_image_seq_len=8192, shift_terminal=0.02, time_shift_type="exponential")
    pipe = QwenImagePipeline(scheduler=scheduler, vae=vae, text_encoder=None, tokenizer=None,
                             transformer=transformer)
    return _finish(pipe)


def qwen_image_text(batch: int, length: int = 8, seed: int = 0, pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random stand-in text embeddings (batch, length, 32) and their mask; the last ``pad``
    positions of each row are padding (mask 0), as a real prompt shorter than the batch's."""
    generator = torch.Generator().manual_seed(seed)
    embeds = torch.randn(batch, length, QWEN_IMAGE_TEXT_DIM, generator=generator)
    mask = torch.ones(batch, length, dtype=torch.long)
    if pad:
        mask[:, length - pad:] = 0
    return embeds, mask


__all__ = ["cosine_dpm_solver", "qwen_image_text", "tiny_qwen_image_pipeline", "tiny_stable_audio_pipeline"]
