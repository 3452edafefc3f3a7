"""The bundled "notes" text-to-audio model: a small real ``MusicLDMPipeline``.

Why this exists: SADA's audio fidelity numbers only mean something on a network that has
learned a distribution, and a prompt that names a pitch can be checked with DSP alone.
This module defines the architecture (mel VAE, CLAP-conditioned UNet, HiFi-GAN vocoder,
local byte tokenizer), the log-mel front end shared by training and evaluation, the
loader (file checks + the transformers-5 compat fix) and pitch/timbre adherence.
``scripts/train_notes.py`` trains it on :mod:`sadakit.bundled.data_notes`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from torch import nn
from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, RobertaTokenizer, SpeechT5HifiGan, SpeechT5HifiGanConfig

from sadakit.bundled import data_notes
from sadakit.bundled._files import MODELS_DIR, check_model_dir
from sadakit.testing.tokenizers import roberta_tokenizer, roberta_vocab

NOTES_DIR = MODELS_DIR / "notes-musicldm"

#: Step count and guidance the model is evaluated and demonstrated at.
DEFAULT_STEPS = 50
DEFAULT_GUIDANCE = 3.0
#: Clip length: 128 mel frames -> 32 latent frames (divisible by the UNet's downsampling).
AUDIO_SECONDS = 1.28
SAMPLE_RATE = data_notes.SAMPLE_RATE
N_MELS = 64
HOP = 160
N_FFT = 1024
LOG_FLOOR = 1e-5
#: "a bright note C4" is 16 bytes + <s> </s>.
TOKENIZER_MAX_LENGTH = 24
TEXT_HIDDEN = 64
#: Pitch adherence tolerance (semitones) and the target the tests hold the model to.
PITCH_TOLERANCE = 0.5

PIPELINE_FILES: tuple[str, ...] = (
    "model_index.json",
    "feature_extractor/preprocessor_config.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "tokenizer/tokenizer.json",
    "tokenizer/tokenizer_config.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
    "vocoder/config.json",
    "vocoder/model.safetensors",
)


# -------------------------------------------------------------------- mel front end


@functools.lru_cache(maxsize=1)
def _mel_transform() -> nn.Module:
    import torchaudio

    return torchaudio.transforms.MelSpectrogram(
        sample_rate=SAMPLE_RATE, n_fft=N_FFT, hop_length=HOP, f_min=0.0, f_max=SAMPLE_RATE / 2,
        n_mels=N_MELS, power=1.0, mel_scale="htk", norm=None,
    )


def log_mel(waveforms: torch.Tensor) -> torch.Tensor:
    """``(B, samples)`` -> ``(B, samples // HOP, N_MELS)`` natural-log mel magnitudes.

    The layout the vocoder takes (time, mel) and the VAE sees as a 1-channel image; the
    last (centred, half-padded) frame is dropped so frames x HOP == samples, which is how
    the pipeline sizes its output. Same STFT settings as :func:`sadakit.metrics.audio.log_mel`.
    """
    mel = _mel_transform().to(waveforms.device)(waveforms.float())
    frames = waveforms.shape[-1] // HOP
    return torch.log(mel.clamp_min(LOG_FLOOR))[..., :frames].transpose(-1, -2)


# ------------------------------------------------------------------- architecture


def build_vocoder(channels: int = 96) -> SpeechT5HifiGan:
    """HiFi-GAN V1 layout (16 kHz, 64 mels, hop 160 = 5*4*2*2*2), narrowed to ``channels``.

    ``normalize_before``: per-bin mean/scale of the training log-mels are stored in the
    model's buffers, so the network sees unit-scale input.
    """
    return SpeechT5HifiGan(
        SpeechT5HifiGanConfig(
            model_in_dim=N_MELS,
            sampling_rate=SAMPLE_RATE,
            upsample_initial_channel=channels,
            upsample_rates=(5, 4, 2, 2, 2),
            upsample_kernel_sizes=(11, 8, 4, 4, 4),
            resblock_kernel_sizes=(3, 7),
            resblock_dilation_sizes=((1, 3, 5), (1, 3, 5)),
            normalize_before=True,
            initializer_range=0.1,
        )
    )


def build_vae() -> AutoencoderKL:
    """4x mel VAE as in MusicLDM: (1, T, 64) log-mel <-> (8, T/4, 16) latents."""
    return AutoencoderKL(
        in_channels=1,
        out_channels=1,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 32),
        layers_per_block=1,
        norm_num_groups=8,
        latent_channels=8,
        sample_size=N_MELS,
    )


def build_tokenizer() -> RobertaTokenizer:
    """Byte-level Roberta tokenizer (CLAP's class), built locally."""
    return roberta_tokenizer(model_max_length=TOKENIZER_MAX_LENGTH)


def build_text_encoder() -> ClapModel:
    """CLAP with a 2-layer text branch (trained jointly with the UNet), no dropout.

    The audio branch is minimal and untrained: MusicLDM uses it only to rank several
    waveforms per prompt (``num_waveforms_per_prompt > 1``), which the notes model does not.
    """
    text_config = dict(
        vocab_size=len(roberta_vocab()),
        hidden_size=TEXT_HIDDEN,
        intermediate_size=2 * TEXT_HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=TOKENIZER_MAX_LENGTH + 2,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        layer_norm_eps=1e-5,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    audio_config = dict(
        spec_size=64, window_size=4, num_mel_bins=64, depths=(1, 1), num_attention_heads=(2, 2),
        patch_embeds_hidden_size=16, hidden_size=32, patch_size=2, patch_stride=2,
        patch_embed_input_channels=4, num_hidden_layers=2,
    )
    return ClapModel(ClapConfig(text_config=text_config, audio_config=audio_config, projection_dim=TEXT_HIDDEN))


def build_unet() -> UNet2DConditionModel:
    """MusicLDM UNet layout on the (8, 32, 16) latent: the CLAP embedding is a class label
    (``simple_projection``, concatenated to the time embedding); attention blocks attend to
    themselves, at the 16x8 level only (the 32x16 level is convolutional, for CPU cost)."""
    widths = (48, 96)
    return UNet2DConditionModel(
        sample_size=int(AUDIO_SECONDS * 100) // 4,
        in_channels=8,
        out_channels=8,
        block_out_channels=widths,
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=widths,
        attention_head_dim=8,
        norm_num_groups=16,
        class_embed_type="simple_projection",
        projection_class_embeddings_input_dim=TEXT_HIDDEN,
        class_embeddings_concat=True,
    )


def build_scheduler() -> DDIMScheduler:
    """The schedule MusicLDM ships with (DDIM, scaled-linear betas 0.0015-0.0195, eps)."""
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.0015,
        beta_end=0.0195,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )


def assemble_pipeline(vae: AutoencoderKL, text_encoder: ClapModel, unet: UNet2DConditionModel,
                      vocoder: SpeechT5HifiGan) -> Any:
    """A real ``MusicLDMPipeline`` around trained parts."""
    from diffusers import MusicLDMPipeline  # deprecated module: import only when needed

    return MusicLDMPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=build_tokenizer(),
        feature_extractor=ClapFeatureExtractor(), unet=unet, scheduler=build_scheduler(), vocoder=vocoder,
    )


def text_embeddings(text_encoder: ClapModel, tokenizer: RobertaTokenizer, prompts: list[str]) -> torch.Tensor:
    """The (n, projection_dim) L2-normalised CLAP text embedding, exactly as the pipeline
    computes it (max-length padding, attention mask)."""
    from sadakit.plugins.audio.compat import pooled_text_embeddings

    tok = tokenizer(prompts, padding="max_length", max_length=TOKENIZER_MAX_LENGTH, truncation=True, return_tensors="pt")
    return pooled_text_embeddings(text_encoder.get_text_features(tok.input_ids, attention_mask=tok.attention_mask))


# ----------------------------------------------------------------------- loading


def load_notes_pipeline(path: Path | str | None = None, torch_dtype: torch.dtype = torch.float32) -> Any:
    """Load the bundled notes model through ``MusicLDMPipeline.from_pretrained``.

    Every expected file is checked first (:class:`~sadakit.bundled.BundledModelError` names
    a missing or corrupted one); the transformers-5 fix for MusicLDM's text encoding is
    applied; components are in eval mode and the progress bar is off.
    """
    from diffusers import MusicLDMPipeline

    from sadakit.plugins.audio.compat import ensure_musicldm_compat

    model_dir = Path(path) if path is not None else NOTES_DIR
    check_model_dir(model_dir, PIPELINE_FILES)
    try:
        pipe = MusicLDMPipeline.from_pretrained(model_dir, local_files_only=True, dtype=torch_dtype)
    except Exception as exc:  # noqa: BLE001 - re-raised with the directory named
        raise ValueError(f"could not load the bundled notes model from {model_dir}: {exc}") from exc
    ensure_musicldm_compat(pipe)
    for component in pipe.components.values():
        if isinstance(component, nn.Module):
            component.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


# -------------------------------------------------------------------- generation


def eval_prompts() -> list[str]:
    """All 16 prompts (8 notes x 2 timbres), note-major."""
    return [data_notes.prompt_for(n, t) for n in data_notes.NOTES for t in data_notes.TIMBRES]


def parse_prompt(prompt: str) -> data_notes.NoteLabel:
    """``"a soft note C4"`` -> its label; ValueError for anything else."""
    words = prompt.split()
    if len(words) != 4 or words[2] != "note" or words[1] not in data_notes.TIMBRES or words[3] not in data_notes.NOTES:
        raise ValueError(f"not a notes prompt: {prompt!r} (expected e.g. 'a soft note C4')")
    return data_notes.NoteLabel(data_notes.NOTES.index(words[3]), data_notes.TIMBRES.index(words[1]))


def generate_notes(
    pipe: Any,
    prompts: list[str],
    seed: int = 0,
    num_inference_steps: int = DEFAULT_STEPS,
    guidance_scale: float = DEFAULT_GUIDANCE,
    batch_size: int = 16,
) -> torch.Tensor:
    """``(n, samples)`` waveforms, one per prompt; clip ``i`` uses seed ``seed + i``, so
    results do not depend on batching."""
    out = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        generators = [torch.Generator().manual_seed(seed + start + i) for i in range(len(chunk))]
        audio = pipe(
            chunk, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
            audio_length_in_s=AUDIO_SECONDS, generator=generators, output_type="pt",
        ).audios
        out.append(torch.as_tensor(audio).float())
    return torch.cat(out)


# -------------------------------------------------------------------- adherence


def brightness(waveforms: torch.Tensor, f0: torch.Tensor) -> torch.Tensor:
    """Power-weighted spectral centroid divided by the fundamental (a timbre measure).

    For the synthesiser's harmonic series: about 1.1 for "soft" (1/k^2 amplitudes), 2 or
    more for "bright" (1/k).
    """
    wav = waveforms.double() - waveforms.double().mean(dim=1, keepdim=True)
    n = wav.shape[1]
    power = torch.fft.rfft(wav * torch.hann_window(n, periodic=False, dtype=torch.float64)).abs() ** 2
    freqs = torch.fft.rfftfreq(n, 1.0 / SAMPLE_RATE).double()
    power[:, freqs < 0.5 * f0.double().min()] = 0
    centroid = (power * freqs).sum(1) / power.sum(1).clamp_min(1e-20)
    return (centroid / f0.double()).float()


@functools.lru_cache(maxsize=1)
def brightness_threshold() -> float:
    """Soft/bright decision boundary: geometric mean of the two timbres' median brightness
    on synthesised ground truth (seeded), so it is measured, not assumed."""
    labels = [data_notes.NoteLabel(n, t) for n in range(len(data_notes.NOTES)) for t in range(2) for _ in range(2)]
    waves = data_notes.synthesize(labels, AUDIO_SECONDS, torch.Generator().manual_seed(1234))
    b = brightness(waves, torch.tensor([l.frequency for l in labels]))
    timbre = torch.tensor([l.timbre for l in labels])
    return float((b[timbre == 0].median() * b[timbre == 1].median()).sqrt())


@dataclass(frozen=True)
class NotesAdherence:
    """Pitch and timbre adherence of clips to their prompts."""

    n: int
    pitch: float  # fraction within +-PITCH_TOLERANCE semitones
    timbre: float  # fraction whose brightness falls on the prompted side of the threshold
    both: float
    median_abs_semitones: float
    rms_level: float  # mean RMS of the clips (silence would pass no pitch check anyway)

    def as_dict(self) -> dict[str, float]:
        return {"n": self.n, "pitch": self.pitch, "timbre": self.timbre, "both": self.both,
                "median_abs_semitones": self.median_abs_semitones, "rms_level": self.rms_level}


def pitch_adherence(waveforms: torch.Tensor, prompts: list[str]) -> NotesAdherence:
    """Measure f0 (:func:`~sadakit.bundled.data_notes.measure_pitch`) and brightness of each
    clip and compare with what its prompt asked for."""
    if waveforms.shape[0] != len(prompts):
        raise ValueError(f"{waveforms.shape[0]} clips but {len(prompts)} prompts")
    labels = [parse_prompt(p) for p in prompts]
    target = torch.tensor([l.frequency for l in labels])
    measured = data_notes.measure_pitch(waveforms, SAMPLE_RATE)
    error = data_notes.semitone_error(measured, target).abs()
    pitch_ok = error <= PITCH_TOLERANCE
    bright = brightness(waveforms, measured.clamp(min=50.0)) > brightness_threshold()
    timbre_ok = bright == torch.tensor([l.timbre == 1 for l in labels])
    return NotesAdherence(
        n=len(prompts),
        pitch=pitch_ok.float().mean().item(),
        timbre=timbre_ok.float().mean().item(),
        both=(pitch_ok & timbre_ok).float().mean().item(),
        median_abs_semitones=error.median().item(),
        rms_level=waveforms.float().pow(2).mean(1).sqrt().mean().item(),
    )


def evaluate_notes(
    pipe: Any,
    seeds: tuple[int, ...] = (0,),
    num_inference_steps: int = DEFAULT_STEPS,
    guidance_scale: float = DEFAULT_GUIDANCE,
) -> NotesAdherence:
    """Adherence of ``pipe`` over the 16 prompts x ``seeds`` (seed s uses 1000 s + i)."""
    prompts = eval_prompts()
    clips, all_prompts = [], []
    for seed in seeds:
        clips.append(generate_notes(pipe, prompts, 1000 * seed, num_inference_steps, guidance_scale))
        all_prompts += prompts
    return pitch_adherence(torch.cat(clips), all_prompts)
