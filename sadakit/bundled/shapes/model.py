"""The bundled "shapes" text-to-image model: architecture, loader and generation.

Why this exists: SADA's fidelity numbers only mean something on a network that has learned
a data distribution. This module defines a small but real ``StableDiffusionPipeline``
(AutoencoderKL, CLIP text encoder with a local byte-level tokenizer, UNet2DConditionModel
with cross-attention at two resolutions, zero-terminal-SNR v-prediction schedule) that
``scripts/train_shapes.py`` trains on :mod:`sadakit.bundled.data_shapes`, and an independent
CNN classifier (:mod:`.judging`) that reads shape, colour and position back from generated
images, so prompt adherence is measured rather than eyeballed.

The architecture builders live here (not in the script) so training and loading agree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from sadakit.bundled import data_shapes
from sadakit.bundled._files import MODELS_DIR, load_bundled
from sadakit.bundled.tokenizers import clip_tokenizer, clip_vocab

MODEL_DIR = MODELS_DIR / "shapes-sd"

#: Step count and guidance the model is evaluated and demonstrated at.
DEFAULT_STEPS = 50
DEFAULT_GUIDANCE = 5.0
#: Pipeline call arguments of every generation (``sadakit generate`` / ``bench`` use them too).
CALL_KWARGS = {"guidance_scale": DEFAULT_GUIDANCE}
#: Longest prompt is 39 byte tokens with bos/eos; 48 keeps attention small.
TOKENIZER_MAX_LENGTH = 48
TEXT_HIDDEN = 64
IMAGE_SIZE = data_shapes.IMAGE_SIZE

#: Files ``from_pretrained`` needs; checked up front so a broken install names the file.
PIPELINE_FILES: tuple[str, ...] = (
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "tokenizer/tokenizer.json",
    "tokenizer/tokenizer_config.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
)


# ------------------------------------------------------------------- architecture


def build_vae() -> AutoencoderKL:
    """4x-downsampling KL autoencoder: 32x32x3 images <-> 8x8x4 latents.

    Two downsampling stages (SD has three) keep training affordable on a shared 2-core CPU;
    the flat-coloured data compresses well (3072 -> 256 numbers).
    """
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 32),
        layers_per_block=1,
        norm_num_groups=8,
        latent_channels=4,
        sample_size=IMAGE_SIZE,
    )


def build_tokenizer() -> CLIPTokenizer:
    """Byte-level CLIP tokenizer (no merges), shortened to :data:`TOKENIZER_MAX_LENGTH`."""
    return clip_tokenizer(model_max_length=TOKENIZER_MAX_LENGTH)


def build_text_encoder() -> CLIPTextModel:
    """2-layer CLIP text transformer over the byte vocabulary (trained jointly with the UNet)."""
    vocab = clip_vocab()
    config = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=TEXT_HIDDEN,
        intermediate_size=2 * TEXT_HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=TOKENIZER_MAX_LENGTH,
        projection_dim=TEXT_HIDDEN,
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
        hidden_act="gelu",
    )
    return CLIPTextModel(config)


def build_unet() -> UNet2DConditionModel:
    """SD-1 layout on an 8x8 latent: cross-attention at both resolutions (8x8 and 4x4), so
    SADA's token-wise sparsity has a multi-resolution UNet to work on."""
    return UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 4,
        in_channels=4,
        out_channels=4,
        block_out_channels=(64, 96),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1,
        attention_head_dim=4,
        cross_attention_dim=TEXT_HIDDEN,
        norm_num_groups=32,
    )


def build_scheduler() -> EulerDiscreteScheduler:
    """Zero-terminal-SNR schedule with v-prediction and "trailing" Euler steps.

    Why (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed"):
    SD's scaled-linear betas end at alpha_bar ~0.0047, so the training input at t=999 still
    holds 6.8% of the clean latent. On an 8x8 latent that leak shows where the shape is, the
    first model learned to read position from it, and at inference (pure noise) placed
    shapes wherever the noise's low frequencies pointed (position adherence 25%, following
    the noise 73% of the time). Rescaled betas make t=999 pure noise (diffusers stores
    alpha_bar[-1] = 2**-24 so the first Euler sigma is finite), v-prediction stays
    well-defined there, and "trailing" spacing makes sampling start at t=999.
    """
    return EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        timestep_spacing="trailing",
        steps_offset=1,
    )


def assemble_pipeline(
    vae: AutoencoderKL, text_encoder: CLIPTextModel, unet: UNet2DConditionModel
) -> StableDiffusionPipeline:
    """A real ``StableDiffusionPipeline`` around trained parts (no safety checker)."""
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=build_tokenizer(),
        unet=unet,
        scheduler=build_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return pipe


# ------------------------------------------------------------------ load / generate


def load_pipeline(path: Path | str | None = None, torch_dtype: torch.dtype = torch.float32) -> StableDiffusionPipeline:
    """Load the bundled shapes model through ``StableDiffusionPipeline.from_pretrained``.

    Every expected file is checked first (present, non-empty, safetensors headers
    readable), so a damaged install fails with the file's name instead of a deep
    diffusers/transformers traceback. Components are put in eval mode and the progress
    bar is disabled.
    """
    model_dir = Path(path) if path is not None else MODEL_DIR
    return load_bundled(StableDiffusionPipeline, model_dir, PIPELINE_FILES, "shapes", torch_dtype=torch_dtype,
                        safety_checker=None, feature_extractor=None)


def eval_prompts(n: int | None = None) -> list[str]:
    """The evaluation prompt set: all 48 combinations, or the first ``n`` of a fixed
    interleaving that covers every shape, colour and position early."""
    labels = data_shapes.all_labels()
    # stride 7 is coprime with 48 and mixes all three attributes within the first dozen
    order = [labels[(7 * i) % len(labels)] for i in range(len(labels))]
    chosen = order if n is None else order[:n]
    return [label.prompt for label in chosen]


def images_to_tensor(images: Any) -> torch.Tensor:
    """Pipeline output (PIL list, numpy or pt in [0, 1]) -> ``(n, 3, H, W)`` float in [0, 1]."""
    if isinstance(images, torch.Tensor):
        return images.float().clamp(0, 1)
    import numpy as np

    if isinstance(images, np.ndarray):
        return torch.from_numpy(images).permute(0, 3, 1, 2).float().clamp(0, 1)
    arrays = [torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1) for im in images]
    return torch.stack(arrays)


def generate(
    pipe: StableDiffusionPipeline,
    prompts: list[str],
    seed: int = 0,
    num_inference_steps: int = DEFAULT_STEPS,
    guidance_scale: float = DEFAULT_GUIDANCE,
    batch_size: int = 16,
) -> torch.Tensor:
    """Generate one image per prompt, ``(n, 3, 32, 32)`` in [0, 1].

    Image ``i`` uses ``torch.Generator().manual_seed(seed + i)`` for its own initial noise,
    so results do not depend on how the prompts are batched.
    """
    out = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        generators = [torch.Generator().manual_seed(seed + start + i) for i in range(len(chunk))]
        images = pipe(
            chunk,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generator=generators,
            output_type="pt",
        ).images
        out.append(images_to_tensor(images))
    return torch.cat(out)
