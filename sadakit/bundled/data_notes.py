"""Procedural "notes" dataset for the bundled MusicLDM model, and its pitch check.

Why: an audio model whose prompt names a pitch can be checked with DSP alone: the
fundamental of a generated clip is measured and compared with the note the prompt asked
for, in semitones. This module holds the synthesiser (harmonic tones with an attack/decay
envelope, seeded) and the measurement, so the measurement is validated on ground truth
before it judges a model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SAMPLE_RATE = 16000
#: One octave of natural notes around middle C (well inside what a 64-bin mel VAE resolves).
NOTES: tuple[str, ...] = ("C4", "D4", "E4", "F4", "G4", "A4", "B4", "C5")
_SEMITONES = {"C": -9, "D": -7, "E": -5, "F": -4, "G": -2, "A": 0, "B": 2}
TIMBRES: tuple[str, ...] = ("soft", "bright")


def note_frequency(note: str) -> float:
    """Equal-tempered frequency of e.g. ``"A4"`` (440 Hz)."""
    name, octave = note[:-1], int(note[-1])
    return 440.0 * 2 ** ((_SEMITONES[name] + 12 * (octave - 4)) / 12)


def prompt_for(note: str, timbre: str) -> str:
    """E.g. ``"a soft note C4"``."""
    return f"a {timbre} note {note}"


@dataclass(frozen=True)
class NoteLabel:
    note: int
    timbre: int

    @property
    def prompt(self) -> str:
        return prompt_for(NOTES[self.note], TIMBRES[self.timbre])

    @property
    def frequency(self) -> float:
        return note_frequency(NOTES[self.note])


def synthesize(labels: list[NoteLabel], seconds: float, generator: torch.Generator) -> torch.Tensor:
    """``(n, samples)`` waveforms in [-1, 1]: harmonic tone, attack 10-30 ms, exponential decay.

    "soft" has 1/k^2 harmonic amplitudes (nearly sine), "bright" 1/k (sawtooth-like) up to
    6 kHz. Onset (0-50 ms), decay rate, detune (+-10 cents) and level are jittered.
    """
    return synthesize_with_f0(labels, seconds, generator)[0]


def synthesize_with_f0(labels: list[NoteLabel], seconds: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`synthesize`, plus the exact (detuned) fundamental of each clip in Hz: the
    supervision target of the vocoder's pitch head. Same random stream, same waveforms."""
    n_samples = int(round(seconds * SAMPLE_RATE))
    t = torch.arange(n_samples, dtype=torch.float64) / SAMPLE_RATE
    out = torch.zeros(len(labels), n_samples, dtype=torch.float64)
    f0s = torch.zeros(len(labels), dtype=torch.float64)
    for i, label in enumerate(labels):
        r = torch.rand(5, generator=generator, dtype=torch.float64)
        f0 = label.frequency * 2 ** ((r[0].item() - 0.5) * 0.2 / 12)
        onset = 0.05 * r[1].item()
        attack = 0.01 + 0.02 * r[2].item()
        decay = 1.0 + 2.0 * r[3].item()
        level = 0.5 + 0.3 * r[4].item()
        tt = (t - onset).clamp(min=0)
        env = torch.clamp(tt / attack, max=1.0) * torch.exp(-decay * tt) * (t >= onset)
        power = 2 if TIMBRES[label.timbre] == "soft" else 1
        tone = torch.zeros_like(t)
        for k in range(1, int(6000 // f0) + 1):
            tone += torch.sin(2 * math.pi * k * f0 * tt) / k**power
        tone /= tone.abs().max().clamp(min=1e-9)
        out[i] = level * env * tone
        f0s[i] = f0
    return out.float(), f0s.float()


def measure_pitch(waveforms: torch.Tensor, sample_rate: int = SAMPLE_RATE, low_hz: float = 80.0) -> torch.Tensor:
    """Fundamental frequency (Hz) of each clip: the strongest peak of the Hann-windowed
    magnitude spectrum above ``low_hz``, refined by parabolic interpolation.

    Why not ``torchaudio.functional.detect_pitch_frequency``: on these harmonic tones its
    autocorrelation picks sub-octaves (measured here: -12 to -31 semitones off on clean
    synthesised notes), while the fundamental is always the largest partial of both timbres.
    """
    wav = waveforms if waveforms.dim() == 2 else waveforms.unsqueeze(0)
    wav = wav.double() - wav.double().mean(dim=1, keepdim=True)
    n = wav.shape[1]
    spectrum = torch.fft.rfft(wav * torch.hann_window(n, periodic=False, dtype=torch.float64), n=2 * n).abs()
    freqs = torch.fft.rfftfreq(2 * n, 1.0 / sample_rate)
    spectrum[:, freqs < low_hz] = 0
    k = spectrum.argmax(dim=1).clamp(1, spectrum.shape[1] - 2)
    rows = torch.arange(wav.shape[0])
    a, b, c = (torch.log(spectrum[rows, k + d] + 1e-12) for d in (-1, 0, 1))
    offset = 0.5 * (a - c) / (a - 2 * b + c).where((a - 2 * b + c).abs() > 1e-12, torch.ones_like(a))
    return ((k.double() + offset.clamp(-0.5, 0.5)) * (freqs[1] - freqs[0])).float()


def semitone_error(measured_hz: torch.Tensor, target_hz: torch.Tensor) -> torch.Tensor:
    """Signed distance in semitones (``12 * log2(measured / target)``)."""
    return 12 * torch.log2(measured_hz.clamp(min=1e-3) / target_hz)
