"""A log-mel vocoder that is not locked to the mel frame rate, for the bundled notes model.

Why not ``SpeechT5HifiGan`` (MusicLDM's vocoder): it is convolutions and strided transposed
convolutions whose strides multiply to the hop, so shifting its input by one frame shifts its
output by exactly one hop. A steady note has (nearly) constant mel frames, so its output is
periodic in the hop (160 samples at 16 kHz) whatever the weights: every partial lands on a
multiple of 100 Hz, and 5 of the 8 notes of the bundled model cannot be rendered within half a
semitone (measured: see docs/bundled_models.md and ``tests/test_harmonic_vocoder.py``).

Here a small dilated convolutional network reads, per mel frame, the fundamental ``f0`` and the
amplitudes of its harmonics; a bank of oscillators renders them, with the phase being the running
integral of ``f0`` over the whole clip. The phase is therefore continuous across frames and a
440 Hz note comes out at 440 Hz. This is the harmonic synthesiser of DDSP (Engel et al., 2020)
with the excitation idea of NSF (Wang et al., 2019), driven by a mel instead of by features.
Scope, stated plainly: one fundamental per frame and no noise branch, so it suits monophonic
pitched sound (the notes model) and is not a general music vocoder.

The class is a diffusers ``ModelMixin``/``ConfigMixin``, so ``MusicLDMPipeline.save_pretrained``
records it by module path and ``from_pretrained`` loads it once this module is imported; its
config carries the two fields the pipeline reads from a vocoder (``upsample_rates``, whose
product is the hop, and ``sampling_rate``) plus ``model_in_dim``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers import ModelMixin  # also looked up by name in this module by diffusers' loader
from diffusers.configuration_utils import ConfigMixin, register_to_config
from torch import nn


class HarmonicVocoder(ModelMixin, ConfigMixin):
    """``(batch, frames, mels)`` natural-log mel -> ``(batch, frames * hop)`` waveform.

    Same call convention as ``transformers.SpeechT5HifiGan`` (an unbatched ``(frames, mels)``
    input gives an unbatched waveform), so ``MusicLDMPipeline`` uses it unchanged.
    """

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        model_in_dim: int = 64,
        sampling_rate: int = 16000,
        upsample_rates: tuple[int, ...] = (160,),
        n_harmonics: int = 48,
        hidden_channels: int = 128,
        dilations: tuple[int, ...] = (1, 2, 4, 8, 1),
        f0_min: float = 50.0,
        f0_max: float = 2000.0,
    ) -> None:
        super().__init__()
        _check_config(model_in_dim, sampling_rate, upsample_rates, n_harmonics, hidden_channels, dilations, f0_min, f0_max)
        # per-bin statistics of the training mels: the network sees unit-scale input
        self.register_buffer("mean", torch.zeros(model_in_dim))
        self.register_buffer("scale", torch.ones(model_in_dim))
        self.conv_in = nn.Conv1d(model_in_dim, hidden_channels, kernel_size=5, padding=2)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.GroupNorm(1, hidden_channels),
                nn.LeakyReLU(0.1),
                nn.Conv1d(hidden_channels, hidden_channels, kernel_size=3, dilation=d, padding=d),
            )
            for d in dilations
        )
        self.f0_head = nn.Conv1d(hidden_channels, 1, kernel_size=1)
        self.amplitude_head = nn.Conv1d(hidden_channels, 1 + n_harmonics, kernel_size=1)
        self.register_buffer("harmonic_numbers", torch.arange(1, n_harmonics + 1, dtype=torch.float32), persistent=False)

    @property
    def hop_length(self) -> int:
        return math.prod(self.config.upsample_rates)

    # ---------------------------------------------------------------- analysis

    def controls(self, spectrogram: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-frame fundamental (Hz, ``(B, T)``, float32) and harmonic amplitudes (``(B, T, K)``).

        The amplitudes are an overall loudness times a distribution over the harmonics
        (DDSP's parameterisation); harmonics at or above Nyquist get none, so nothing aliases.
        """
        cfg = self.config
        x = (spectrogram - self.mean) / self.scale
        h = self.conv_in(x.transpose(1, 2))
        for block in self.blocks:
            h = h + block(h)
        h = F.leaky_relu(h, 0.1)
        # float32 even in a half model: float16 steps 0.5 Hz at 512-1024 Hz, a phase drift
        f0 = cfg.f0_min * (cfg.f0_max / cfg.f0_min) ** torch.sigmoid(self.f0_head(h)[:, 0].float())
        raw = self.amplitude_head(h).transpose(1, 2)  # (B, T, 1 + K)
        loudness = F.softplus(raw[..., 0])
        audible = self.harmonic_numbers * f0[..., None] < cfg.sampling_rate / 2
        logits = raw[..., 1:].masked_fill(~audible, float("-inf"))
        return f0, loudness[..., None] * torch.softmax(logits, dim=-1)

    # --------------------------------------------------------------- synthesis

    def synthesize(self, f0: torch.Tensor, amplitudes: torch.Tensor) -> torch.Tensor:
        """Oscillator bank: ``(B, T)`` Hz and ``(B, T, K)`` amplitudes -> ``(B, T * hop)``.

        Controls are interpolated linearly between frame ``i`` (at sample ``i * hop``, where the
        centred STFT puts it) and frame ``i + 1``; the phase is accumulated in float64 (a clip
        holds hundreds of cycles) and wrapped before the harmonics multiply it; the oscillators
        run in float32 whatever the model's dtype.
        """
        out_dtype = amplitudes.dtype
        hop = self.hop_length
        f0_s = _upsample(f0.float()[:, None, :], hop)[:, 0]  # (B, N)
        amp_s = _upsample(amplitudes.float().transpose(1, 2), hop).transpose(1, 2)  # (B, N, K)
        cycles = torch.cumsum(f0_s.double() / self.config.sampling_rate, dim=-1)
        phase = (cycles - torch.floor(cycles)).float()  # in [0, 1); float32 even for a half model:
        harmonics = self.harmonic_numbers.float()  # 40 x a float16 phase would be off by 0.04 cycle
        amp_s = amp_s * (harmonics * f0_s[..., None] < self.config.sampling_rate / 2)
        return (amp_s * torch.sin(2 * math.pi * phase[..., None] * harmonics)).sum(-1).to(out_dtype)

    def forward(self, spectrogram: torch.Tensor) -> torch.Tensor:
        if spectrogram.dim() not in (2, 3) or spectrogram.shape[-1] != self.config.model_in_dim:
            raise ValueError(
                f"HarmonicVocoder expects a (frames, {self.config.model_in_dim}) or (batch, frames, "
                f"{self.config.model_in_dim}) log-mel spectrogram, got shape {tuple(spectrogram.shape)}"
            )
        unbatched = spectrogram.dim() == 2
        batch = spectrogram[None] if unbatched else spectrogram
        waveform = self.synthesize(*self.controls(batch.to(self.mean.dtype)))
        return waveform[0] if unbatched else waveform


def _upsample(x: torch.Tensor, hop: int) -> torch.Tensor:
    """``(B, C, T)`` -> ``(B, C, T * hop)``: sample ``n`` reads frame ``n / hop`` (the last frame
    is held for its final hop)."""
    padded = torch.cat([x, x[..., -1:]], dim=-1)
    return F.interpolate(padded, size=x.shape[-1] * hop + 1, mode="linear", align_corners=True)[..., :-1]


def _check_config(model_in_dim: int, sampling_rate: int, upsample_rates: tuple[int, ...], n_harmonics: int,
                  hidden_channels: int, dilations: tuple[int, ...], f0_min: float, f0_max: float) -> None:
    """Refuse a configuration that could only fail later, naming the argument."""
    for name, value in (("model_in_dim", model_in_dim), ("sampling_rate", sampling_rate),
                        ("n_harmonics", n_harmonics), ("hidden_channels", hidden_channels)):
        if int(value) != value or value < 1:
            raise ValueError(f"HarmonicVocoder: {name} must be a positive integer, got {value!r}")
    if not upsample_rates or any(int(r) != r or r < 1 for r in upsample_rates):
        raise ValueError(f"HarmonicVocoder: upsample_rates must be positive integers (their product is the hop), got {upsample_rates!r}")
    if not dilations or any(int(d) != d or d < 1 for d in dilations):
        raise ValueError(f"HarmonicVocoder: dilations must be positive integers, got {dilations!r}")
    if not 0 < f0_min < f0_max < sampling_rate / 2:
        raise ValueError(
            f"HarmonicVocoder: need 0 < f0_min < f0_max < sampling_rate / 2 = {sampling_rate / 2:g} Hz, "
            f"got f0_min={f0_min!r}, f0_max={f0_max!r}"
        )
