"""The notes model's judge: pitch and timbre of clips read by DSP, against their prompts.

Evaluation code: the model (:mod:`.model`) does not need it. Pitch comes from the waveform
(:func:`~sadakit.bundled.data_notes.measure_pitch`) and, apart from the vocoder, from the
log-mel the VAE decoded (:func:`mel_pitch`); timbre from the spectral centroid.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

from sadakit.bundled import data_notes

from .model import (
    AUDIO_SECONDS, DEFAULT_GUIDANCE, DEFAULT_STEPS, N_FFT, N_MELS, SAMPLE_RATE, _mel_transform, eval_prompts,
    generate_with_mels, parse_prompt,
)

#: Pitch adherence tolerance (semitones) and the target the tests hold the model to.
PITCH_TOLERANCE = 0.5


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


def adherence(waveforms: torch.Tensor, prompts: list[str], log_mels: torch.Tensor | None = None) -> NotesAdherence:
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


def evaluate(
    pipe: Any,
    n_prompts: int | None = None,
    seeds: tuple[int, ...] = (0,),
    num_inference_steps: int = DEFAULT_STEPS,
    guidance_scale: float = DEFAULT_GUIDANCE,
) -> NotesAdherence:
    """Adherence of ``pipe`` over :func:`eval_prompts` x ``seeds`` (seed s uses 1000 s + i)."""
    prompts = eval_prompts(n_prompts)
    clips, mels, all_prompts = [], [], []
    for seed in seeds:
        audio, mel = generate_with_mels(pipe, prompts, 1000 * seed, num_inference_steps, guidance_scale)
        clips.append(audio)
        mels.append(mel)
        all_prompts += prompts
    return adherence(torch.cat(clips), all_prompts, torch.cat(mels))


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


def scorer() -> Callable[[torch.Tensor, str], dict[str, float]]:
    """A bench scorer: ``score(waveforms, prompt)`` -> ``pitch_adherence`` and ``timbre_adherence``
    of the clips (all generated for ``prompt``). Why: log-mel PSNR against the baseline says how
    much a method changed the sound, not whether it still plays the note asked for."""

    def score(waveforms: torch.Tensor, prompt: str) -> dict[str, float]:
        clips = waveforms.reshape(waveforms.shape[0], -1).float()
        result = adherence(clips, [prompt] * clips.shape[0])
        return {"pitch_adherence": result.pitch, "timbre_adherence": result.timbre}

    return score
