"""The bundled "notes" text-to-audio model: a small real ``MusicLDMPipeline``.

Why this exists: SADA's audio fidelity numbers only mean something on a network that has
learned a distribution, and a prompt that names a pitch can be checked with DSP alone.
This module defines the architecture (mel VAE, CLAP-conditioned UNet, harmonic vocoder,
local byte tokenizer), the log-mel front end shared by training and evaluation, the
loader (file checks + the transformers-5 compat fix) and pitch/timbre adherence.
``scripts/train_notes.py`` trains it on :mod:`sadakit.bundled.data_notes`.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from torch import nn
from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, RobertaTokenizer

from sadakit.bundled import data_notes
from sadakit.bundled._files import MODELS_DIR, check_model_dir
from sadakit.bundled.harmonic_vocoder import HarmonicVocoder
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
    "vocoder/diffusion_pytorch_model.safetensors",
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


def build_vocoder() -> HarmonicVocoder:
    """The harmonic-oscillator vocoder (:mod:`sadakit.bundled.harmonic_vocoder`), sized for the
    notes: fundamentals 150-900 Hz (the notes span 235-576 Hz with detune), 40 harmonics (the
    bright timbre reaches 6 kHz, 23 partials above C4; the rest are masked at Nyquist).

    Why not MusicLDM's ``SpeechT5HifiGan``: trained on the same data (the vocoder shipped until
    2026-11-24) it rendered every steady note on a 100 Hz comb, 37.5% pitch adherence at best.
    """
    return HarmonicVocoder(
        model_in_dim=N_MELS, sampling_rate=SAMPLE_RATE, upsample_rates=(HOP,), n_harmonics=40,
        hidden_channels=128, dilations=(1, 2, 4, 8, 1), f0_min=150.0, f0_max=900.0,
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
    """MusicLDM's DDIM schedule (scaled-linear betas 0.0015-0.0195), rescaled to zero terminal
    SNR, with v-prediction and "trailing" spacing (Lin et al. 2024).

    Why not MusicLDM's eps setting: trained with it, the UNet ignored the prompt (eps MSE with
    the right and a wrong prompt equal to 4 digits at every t). The pitch is readable from the
    noisy latent at low and mid t, and at high t the eps loss weighs the clean-signal error by
    only ~SNR, so the conditioning got no gradient; with zero terminal SNR and v-prediction
    the model must predict the clean latent from pure noise plus the prompt at t = 999.
    """
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.0015,
        beta_end=0.0195,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        timestep_spacing="trailing",
    )


def assemble_pipeline(vae: AutoencoderKL, text_encoder: ClapModel, unet: UNet2DConditionModel,
                      vocoder: HarmonicVocoder) -> Any:
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
    applied; components are in eval mode and the progress bar is off. The vocoder is
    :class:`~sadakit.bundled.harmonic_vocoder.HarmonicVocoder` (``model_index.json`` names its
    module, imported here); diffusers' warning that the pipeline's annotation says
    ``SpeechT5HifiGan`` is dropped for that one component, every other warning stays.
    """
    from diffusers import MusicLDMPipeline

    from sadakit.plugins.audio.compat import ensure_musicldm_compat

    model_dir = Path(path) if path is not None else NOTES_DIR
    check_model_dir(model_dir, PIPELINE_FILES)
    pipeline_logger = logging.getLogger("diffusers.pipelines.pipeline_utils")
    expected_vocoder_warning = _DropMessages("Expected types for vocoder:")
    pipeline_logger.addFilter(expected_vocoder_warning)
    try:
        pipe = MusicLDMPipeline.from_pretrained(model_dir, local_files_only=True, dtype=torch_dtype)
    except Exception as exc:  # noqa: BLE001 - re-raised with the directory named
        raise ValueError(f"could not load the bundled notes model from {model_dir}: {exc}") from exc
    finally:
        pipeline_logger.removeFilter(expected_vocoder_warning)
    ensure_musicldm_compat(pipe)
    for component in pipe.components.values():
        if isinstance(component, nn.Module):
            component.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


class _DropMessages(logging.Filter):
    """Drops log records whose message starts with a given prefix."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


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
    return generate_notes_and_mels(pipe, prompts, seed, num_inference_steps, guidance_scale, batch_size)[0]


def generate_notes_and_mels(
    pipe: Any,
    prompts: list[str],
    seed: int = 0,
    num_inference_steps: int = DEFAULT_STEPS,
    guidance_scale: float = DEFAULT_GUIDANCE,
    batch_size: int = 16,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Waveforms ``(n, samples)`` and the log-mels ``(n, frames, N_MELS)`` they were vocoded
    from. The pipeline runs with ``output_type="latent"``; the VAE decode and vocoder steps
    are then done here exactly as ``MusicLDMPipeline`` does them after the denoising loop."""
    audio, mels = [], []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        generators = [torch.Generator().manual_seed(seed + start + i) for i in range(len(chunk))]
        latents = pipe(
            chunk, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
            audio_length_in_s=AUDIO_SECONDS, generator=generators, output_type="latent",
        ).audios
        with torch.no_grad():
            mel = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
            wave = pipe.mel_spectrogram_to_waveform(mel)[:, : int(AUDIO_SECONDS * SAMPLE_RATE)]
        mels.append(mel.squeeze(1).float())
        audio.append(wave.float())
    return torch.cat(audio), torch.cat(mels)


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
    mel_pitch: float | None = None  # fraction within tolerance, judged on the log-mel (before the vocoder)

    def as_dict(self) -> dict[str, float | None]:
        return {"n": self.n, "pitch": self.pitch, "timbre": self.timbre, "both": self.both,
                "median_abs_semitones": self.median_abs_semitones, "rms_level": self.rms_level,
                "mel_pitch": self.mel_pitch}


def pitch_adherence(waveforms: torch.Tensor, prompts: list[str], log_mels: torch.Tensor | None = None) -> NotesAdherence:
    """Measure f0 (:func:`~sadakit.bundled.data_notes.measure_pitch`) and brightness of each
    clip and compare with what its prompt asked for; with ``log_mels`` (the mels the clips
    were vocoded from) also the mel-domain pitch (:func:`mel_pitch`)."""
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
        mel_pitch=None if log_mels is None else mel_pitch_adherence(log_mels, prompts),
    )


def evaluate_notes(
    pipe: Any,
    seeds: tuple[int, ...] = (0,),
    num_inference_steps: int = DEFAULT_STEPS,
    guidance_scale: float = DEFAULT_GUIDANCE,
) -> NotesAdherence:
    """Adherence of ``pipe`` over the 16 prompts x ``seeds`` (seed s uses 1000 s + i)."""
    prompts = eval_prompts()
    clips, mels, all_prompts = [], [], []
    for seed in seeds:
        audio, mel = generate_notes_and_mels(pipe, prompts, 1000 * seed, num_inference_steps, guidance_scale)
        clips.append(audio)
        mels.append(mel)
        all_prompts += prompts
    return pitch_adherence(torch.cat(clips), all_prompts, torch.cat(mels))


# -------------------------------------------------------------------------- SADA


@dataclass(frozen=True)
class NotesSADAComparison:
    """Baseline vs SADA on the same prompts and seeds (wall times: medians of alternating runs)."""

    config_name: str
    steps: int
    denoiser_calls: int
    network_calls: int
    #: fraction of (call, batch row) pairs computed: SADA decides per sample, so a call can run
    #: for some rows only ("M" in the report) and save time without lowering network_calls
    computed_row_fraction: float
    baseline_seconds: float
    sada_seconds: float
    log_mel_psnr_db: float
    generated_mel_psnr_db: float  # the VAE-decoded log-mels, before the vocoder
    baseline_adherence: NotesAdherence
    sada_adherence: NotesAdherence
    prompts: list[str]
    baseline_audio: torch.Tensor
    sada_audio: torch.Tensor
    #: per-repeat wall times (paired, run order), for the spread behind the medians
    baseline_times: tuple[float, ...] = ()
    sada_times: tuple[float, ...] = ()
    #: accelerated denoiser FLOPs / baseline's (from the report; None when not counted)
    flops_ratio: float | None = None

    @property
    def speedup(self) -> float:
        return self.baseline_seconds / self.sada_seconds

    def row(self) -> dict[str, Any]:
        """The numbers only (no audio), for tables and JSON."""
        return {
            "config": self.config_name, "steps": self.steps, "n_clips": len(self.prompts),
            "denoiser_calls": self.denoiser_calls, "network_calls": self.network_calls,
            "computed_row_fraction": self.computed_row_fraction,
            "baseline_s": self.baseline_seconds, "sada_s": self.sada_seconds, "speedup": self.speedup,
            "log_mel_psnr_db": self.log_mel_psnr_db, "generated_mel_psnr_db": self.generated_mel_psnr_db,
            "baseline_adherence": self.baseline_adherence.as_dict(), "sada_adherence": self.sada_adherence.as_dict(),
        }


def compare_notes_sada(
    pipe: Any,
    config: Any = None,
    config_name: str = "default",
    n_prompts: int = 16,
    seed: int = 0,
    repeats: int = 3,
    num_inference_steps: int = DEFAULT_STEPS,
    guidance_scale: float = DEFAULT_GUIDANCE,
    on_run: Callable[[str], None] | None = None,
) -> NotesSADAComparison:
    """Run baseline and ``sadakit.accelerate(pipe, config)`` alternately (one batch of the
    first ``n_prompts`` prompts); calls from ``sadakit.report``, median wall times, log-mel
    PSNR of the accelerated clips against the baseline ones (of the audio, and of the log-mels
    the VAE decoded before the vocoder), and adherence of both. ``on_run`` is
    :func:`sadakit.timing.time_pair`'s progress callback."""
    from sadakit.metrics.audio import log_mel_psnr, spectrogram_psnr
    from sadakit.timing import time_pair

    prompts = eval_prompts()[:n_prompts]

    def run() -> tuple[torch.Tensor, torch.Tensor]:
        return generate_notes_and_mels(pipe, prompts, seed, num_inference_steps, guidance_scale, batch_size=len(prompts))

    timing = time_pair(pipe, run, repeats, config, on_run=on_run)
    (base, base_mels), (out, out_mels), rep = timing.baseline, timing.accelerated, timing.report
    return NotesSADAComparison(
        config_name=config_name, steps=num_inference_steps,
        denoiser_calls=rep.denoiser_calls, network_calls=rep.network_calls,
        computed_row_fraction=sum(rep.per_sample_computed) / max(1, rep.denoiser_calls * rep.batch_size),
        baseline_seconds=timing.baseline_s, sada_seconds=timing.accelerated_s,
        log_mel_psnr_db=log_mel_psnr(out, base, SAMPLE_RATE),
        generated_mel_psnr_db=spectrogram_psnr(out_mels, base_mels),
        baseline_adherence=pitch_adherence(base, prompts, base_mels),
        sada_adherence=pitch_adherence(out, prompts, out_mels),
        prompts=prompts, baseline_audio=base, sada_audio=out,
        baseline_times=tuple(timing.baseline_times), sada_times=tuple(timing.accelerated_times),
        flops_ratio=timing.flops_ratio,
    )


def spectrogram_picture(rows: list[torch.Tensor]) -> torch.Tensor:
    """``(3, H, W)`` image in [0, 1]: one row of log-mel spectrograms (low pitch at the
    bottom, time to the right) per tensor of clips, clips side by side, 1 px separators;
    the same colour scale for all rows, so baseline and SADA compare directly."""
    mels = [log_mel(r).transpose(-1, -2).flip(-2) for r in rows]  # (n, mels, frames)
    values = torch.cat([m.flatten() for m in mels])
    lo, hi = float(values.quantile(0.3)), float(values.max())  # contrast: the quietest 30% is black
    lines = []
    for m in mels:
        img = ((m - lo) / (hi - lo)).clamp(0, 1)
        sep = torch.ones(img.shape[0], img.shape[1], 1)
        lines.append(torch.cat([torch.cat([c, s], dim=-1) for c, s in zip(img, sep)], dim=-1))
        lines.append(torch.ones(1, lines[-1].shape[-1]))
    gray = torch.cat(lines, dim=0)
    return torch.stack([gray, gray ** 0.7, gray ** 0.4])


# ------------------------------------------------------------- mel-domain pitch


#: Candidate fundamentals for :func:`mel_pitch`: 2-cent steps from 0.9 x C4 to 1.1 x C5.
_MEL_PITCH_GRID = (0.9 * data_notes.note_frequency("C4"), 1.1 * data_notes.note_frequency("C5"), 0.02)
_MEL_PITCH_MAX_HZ = 2000.0


@functools.lru_cache(maxsize=1)
def _mel_pitch_templates() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(candidate f0s, unit-norm linear-mel templates over the low bins, bin mask)."""
    lo, hi, step = _MEL_PITCH_GRID
    n = int(12 * math.log2(hi / lo) / step) + 1
    f0 = lo * 2 ** (torch.arange(n, dtype=torch.float64) * step / 12)
    t = torch.arange(N_FFT, dtype=torch.float64) / SAMPLE_RATE
    k = torch.arange(1, 9, dtype=torch.float64)
    tones = (torch.sin(2 * math.pi * f0[:, None, None] * k[None, :, None] * t) * k[None, :, None] ** -1.5).sum(1)
    spec = torch.fft.rfft(tones * torch.hann_window(N_FFT, periodic=True, dtype=torch.float64)).abs().float()
    fb = _mel_transform().mel_scale.fb  # (freqs, mels)
    mel = spec @ fb
    centres = torch.tensor([(fb[:, m] * torch.linspace(0, SAMPLE_RATE / 2, fb.shape[0])).sum() / fb[:, m].sum().clamp_min(1e-9)
                            for m in range(N_MELS)])
    mask = centres < _MEL_PITCH_MAX_HZ
    templates = mel[:, mask]
    return f0.float(), templates / templates.norm(dim=1, keepdim=True), mask


def mel_pitch(log_mels: torch.Tensor) -> torch.Tensor:
    """Fundamental (Hz) of each ``(frames, N_MELS)`` log-mel clip, read from the mel itself.

    Why: it judges the diffusion model apart from the vocoder (a vocoder error and a model
    error then tell themselves apart; the HiFi-GAN shipped first could not render most notes,
    see docs/bundled_models.md). The clip's mean linear mel magnitude over its loud frames (bins below 2 kHz) is
    matched (cosine similarity) against the mel of harmonic tones (1/k^1.5 partials) on a
    2-cent grid between 0.9 x C4 and 1.1 x C5; the best candidate is returned.
    """
    f0, templates, mask = _mel_pitch_templates()
    mel = log_mels.float().exp()
    energy = mel.sum(-1)
    loud = (energy >= 0.1 * energy.max(dim=-1, keepdim=True).values).float()
    profile = (mel * loud[..., None]).sum(-2) / loud.sum(-1, keepdim=True).clamp_min(1)
    profile = profile[..., mask]
    profile = profile / profile.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return f0[(profile @ templates.T).argmax(-1)]


def mel_pitch_adherence(log_mels: torch.Tensor, prompts: list[str]) -> float:
    """Fraction of ``(n, frames, N_MELS)`` log-mel clips whose :func:`mel_pitch` is within
    +-PITCH_TOLERANCE semitones of the prompted note."""
    target = torch.tensor([parse_prompt(p).frequency for p in prompts])
    error = data_notes.semitone_error(mel_pitch(log_mels), target).abs()
    return (error <= PITCH_TOLERANCE).float().mean().item()
