"""The bundled "shapes-dit" text-to-image model: a real ``FluxPipeline``, architecture, loader, generation.

Why this exists: every Flux number measured on random weights says only that a method is faithful
to the machinery, not which method keeps a picture. This is the Flux architecture
(``FluxTransformer2DModel`` with double- and single-stream blocks, CLIP pooled + T5 sequence text
conditioning, rotary positions, ``FlowMatchEulerDiscreteScheduler``) at toy size, trained by
``scripts/train_shapes_dit.py`` with flow matching on :mod:`sadakit.bundled.data_shapes`, so the
caches that compete with SADA on DiTs are measured on learned weights.

The VAE is a copy of the shapes-sd one (32x32x3 <-> 8x8x4): 2x2 packing gives 16 image tokens.
Guidance is true classifier-free guidance (``true_cfg_scale`` with an empty negative prompt, two
transformer calls per step), because the model is trained with 10% empty prompts; there is no
guidance embedding to distil.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel, T5Tokenizer

from sadakit.bundled import data_shapes
from sadakit.bundled._files import MODELS_DIR, load_bundled
from sadakit.bundled.tokenizers import clip_tokenizer, clip_vocab, t5_tokenizer, t5_vocab

# The prompt set, prompt order and image conversion are the shapes model's: the same data and judge.
from sadakit.bundled.shapes.model import eval_prompts, images_to_tensor

MODEL_DIR = MODELS_DIR / "shapes-dit"

#: Step count and guidance the model is evaluated and demonstrated at.
DEFAULT_STEPS = 28
DEFAULT_GUIDANCE = 4.0
IMAGE_SIZE = data_shapes.IMAGE_SIZE
#: Longest prompt: 33 CLIP byte tokens with bos/eos, 32 T5 pieces with eos; both padded to 40.
TOKENIZER_MAX_LENGTH = 40
TEXT_HIDDEN = 64
#: Pipeline call arguments of every generation (``sadakit generate`` / ``bench`` use them too):
#: the trained size, the short text sequence, and true CFG against the empty prompt.
CALL_KWARGS = {"height": IMAGE_SIZE, "width": IMAGE_SIZE, "max_sequence_length": TOKENIZER_MAX_LENGTH,
               "true_cfg_scale": DEFAULT_GUIDANCE, "negative_prompt": ""}

#: Files ``from_pretrained`` needs; checked up front so a broken install names the file.
PIPELINE_FILES: tuple[str, ...] = (
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "text_encoder_2/config.json",
    "text_encoder_2/model.safetensors",
    "tokenizer/tokenizer.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer_2/tokenizer.json",
    "tokenizer_2/tokenizer_config.json",
    "transformer/config.json",
    "transformer/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
)


# ------------------------------------------------------------------- architecture


def build_tokenizer() -> CLIPTokenizer:
    """Byte-level CLIP tokenizer (no merges), shortened to :data:`TOKENIZER_MAX_LENGTH`."""
    return clip_tokenizer(model_max_length=TOKENIZER_MAX_LENGTH)


def build_tokenizer_2() -> T5Tokenizer:
    """Character-level T5 tokenizer (the pipeline pads it to ``max_sequence_length``)."""
    return t5_tokenizer(model_max_length=TOKENIZER_MAX_LENGTH)


def build_text_encoder() -> CLIPTextModel:
    """2-layer CLIP text transformer: its pooled (eos) output conditions the blocks' modulation."""
    vocab = clip_vocab()
    config = CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=TEXT_HIDDEN, intermediate_size=2 * TEXT_HIDDEN, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=TOKENIZER_MAX_LENGTH, projection_dim=TEXT_HIDDEN,
        bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"], hidden_act="gelu",
    )
    return CLIPTextModel(config)


def build_text_encoder_2() -> T5EncoderModel:
    """2-layer T5 encoder: its sequence is the text stream of the joint attention."""
    config = T5Config(
        vocab_size=len(t5_vocab()), d_model=TEXT_HIDDEN, d_kv=TEXT_HIDDEN // 4, d_ff=2 * TEXT_HIDDEN, num_layers=2,
        num_heads=4, relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )
    return T5EncoderModel(config)


def build_transformer() -> FluxTransformer2DModel:
    """2 double-stream + 4 single-stream blocks, 4 heads of 32 (width 128), ~2.5M parameters.

    Sized for the 2-core CPU: 16 image tokens + 40 text tokens per sample; rope axes (8, 12, 12)
    sum to the head dimension as Flux requires. No guidance embedding (true CFG instead).
    """
    return FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=2, num_single_layers=4, attention_head_dim=32,
        num_attention_heads=4, joint_attention_dim=TEXT_HIDDEN, pooled_projection_dim=TEXT_HIDDEN,
        guidance_embeds=False, axes_dims_rope=(8, 12, 12),
    )


def build_scheduler() -> FlowMatchEulerDiscreteScheduler:
    """Flow-matching Euler with a fixed shift of 1 (uniform sigmas from 1 to 0).

    Why no dynamic shifting: Flux's resolution-dependent shift is extrapolated from 256-4096
    tokens; at 16 tokens it would be an arbitrary number. sigma = 1 is pure noise, so the
    position must come from the prompt (no terminal-SNR leak, unlike SD's schedule).
    """
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False)


def build_vae(source: Path | str | None = None) -> AutoencoderKL:
    """The shapes-sd VAE (trained on the same data), with ``shift_factor`` 0 as Flux's decode needs."""
    from sadakit.bundled.shapes.model import MODEL_DIR as SHAPES_SD_DIR

    vae = AutoencoderKL.from_pretrained(Path(source) if source is not None else SHAPES_SD_DIR / "vae",
                                        local_files_only=True)
    vae.register_to_config(shift_factor=0.0)
    return vae.eval()


def assemble_pipeline(vae: AutoencoderKL, text_encoder: CLIPTextModel, text_encoder_2: T5EncoderModel,
                      transformer: FluxTransformer2DModel) -> FluxPipeline:
    """A real ``FluxPipeline`` around trained parts."""
    return FluxPipeline(scheduler=build_scheduler(), vae=vae, text_encoder=text_encoder, tokenizer=build_tokenizer(),
                        text_encoder_2=text_encoder_2, tokenizer_2=build_tokenizer_2(), transformer=transformer)


# ------------------------------------------------------------------ load / generate


def load_pipeline(path: Path | str | None = None, torch_dtype: torch.dtype = torch.float32) -> FluxPipeline:
    """Load the bundled shapes-dit model through ``FluxPipeline.from_pretrained``.

    Every expected file is checked first (present, non-empty, safetensors readable), so a damaged
    install fails with the file's name instead of a deep diffusers/transformers traceback; after
    loading, no component may hold weights its file lacks (from_pretrained only warns then).
    """
    model_dir = Path(path) if path is not None else MODEL_DIR
    return load_bundled(FluxPipeline, model_dir, PIPELINE_FILES, "shapes-dit", torch_dtype=torch_dtype)


def generate(
    pipe: FluxPipeline,
    prompts: list[str],
    seed: int = 0,
    num_inference_steps: int = DEFAULT_STEPS,
    guidance_scale: float = DEFAULT_GUIDANCE,
    batch_size: int = 16,
) -> torch.Tensor:
    """Generate one image per prompt, ``(n, 3, 32, 32)`` in [0, 1].

    Image ``i`` uses ``torch.Generator().manual_seed(seed + i)`` for its own initial noise, so
    results do not depend on batching. ``guidance_scale`` is the true-CFG scale (1: no CFG).
    """
    out = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        generators = [torch.Generator().manual_seed(seed + start + i) for i in range(len(chunk))]
        images = pipe(
            chunk, negative_prompt=[""] * len(chunk), true_cfg_scale=guidance_scale, height=IMAGE_SIZE,
            width=IMAGE_SIZE, num_inference_steps=num_inference_steps, max_sequence_length=TOKENIZER_MAX_LENGTH,
            generator=generators, output_type="pt",
        ).images
        out.append(images_to_tensor(images))
    return torch.cat(out)


__all__ = ["MODEL_DIR", "DEFAULT_STEPS", "DEFAULT_GUIDANCE", "CALL_KWARGS", "IMAGE_SIZE", "PIPELINE_FILES",
           "load_pipeline", "generate", "eval_prompts", "images_to_tensor", "assemble_pipeline"]
