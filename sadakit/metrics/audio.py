"""Audio fidelity against a baseline waveform: log-mel PSNR, log-spectral distance, SNR.

Why these: an accelerated generation should reproduce the *baseline* output of the same
pipeline and seed, so every metric is a distance to that reference, not a quality score.
Waveform SNR is strict (a sub-millisecond shift ruins it); the spectrogram metrics judge what
a listener hears: log-mel PSNR on the mel scale the vocoder itself consumes, and LSD on the
linear power spectrum. Spectrogram LPIPS (the paper's MusicLDM metric) needs ImageNet backbone
weights and is computed only when they are already on this machine: nothing is downloaded.

Waveforms: (S,) or (B, S) tensors or arrays, floats in [-1, 1]. PSNR and SNR of a batch are
the mean of the finite per-waveform values, inf only when every waveform equals its reference.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch

logger = logging.getLogger("sadakit")

#: log(mel) floor, as in HiFi-GAN/MusicLDM mel features (log(clamp(x, 1e-5))).
_LOG_FLOOR = 1e-5
#: power floor of the LSD (-100 dB): silence in both signals counts as equal.
_POWER_FLOOR = 1e-10
_lpips_notice_given = False


def _as_batch(waveform: Any) -> torch.Tensor:
    """(B, S) float32 tensor from a tensor/array of shape (S,) or (B, S)."""
    t = torch.as_tensor(np.asarray(waveform) if not isinstance(waveform, torch.Tensor) else waveform)
    t = t.detach().to("cpu", torch.float32)
    if t.dim() == 1:
        t = t.unsqueeze(0)
    if t.dim() != 2:
        raise ValueError(f"expected waveforms of shape (S,) or (B, S), got {tuple(t.shape)}")
    return t


def _pair(test: Any, reference: Any) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = _as_batch(test), _as_batch(reference)
    if a.shape != b.shape:
        raise ValueError(f"test and reference waveforms differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    return a, b


def _mean(values: list[float]) -> float:
    return float("inf") if all(math.isinf(v) for v in values) else float(np.mean([v for v in values if not math.isinf(v)]))


def stft_settings(sample_rate: int) -> dict[str, int]:
    """64 ms windows and 10 ms hops at any rate (1024 / 160 at 16 kHz, MusicLDM's mel settings)."""
    n_fft = 1 << max(6, round(math.log2(0.064 * sample_rate)))
    return {"n_fft": n_fft, "hop_length": max(1, sample_rate // 100)}


def log_mel(waveform: Any, sample_rate: int, n_mels: int = 64) -> torch.Tensor:
    """(B, n_mels, frames) natural-log mel spectrogram at the pipeline's sample rate."""
    import torchaudio

    x = _as_batch(waveform)
    mel = torchaudio.transforms.MelSpectrogram(
        sample_rate=sample_rate, n_mels=n_mels, f_max=sample_rate / 2, power=1.0, **stft_settings(sample_rate)
    )(x)
    return torch.log(mel.clamp_min(_LOG_FLOOR))


def log_mel_psnr(test: Any, reference: Any, sample_rate: int, n_mels: int = 64) -> float:
    """PSNR (dB) of the test log-mel spectrogram, the peak being the reference's dynamic range."""
    a, b = _pair(test, reference)
    return spectrogram_psnr(log_mel(a, sample_rate, n_mels), log_mel(b, sample_rate, n_mels))


def spectrogram_psnr(test: torch.Tensor, reference: torch.Tensor) -> float:
    """PSNR (dB) of batched log spectrograms, each clip's peak being its reference's dynamic
    range, averaged over clips. Also for the log-mels a pipeline generates *before* its
    vocoder: that separates what an accelerator changed from what the vocoder amplified."""
    if test.shape != reference.shape:
        raise ValueError(f"test and reference spectrograms differ in shape: {tuple(test.shape)} vs {tuple(reference.shape)}")
    values = []
    for x, y in zip(test.double(), reference.double()):
        mse = float(torch.mean((x - y) ** 2))
        peak = float(y.max() - y.min()) or 1.0
        values.append(float("inf") if mse == 0.0 else 10.0 * math.log10(peak**2 / mse))
    return _mean(values)


def log_spectral_distance(test: Any, reference: Any, sample_rate: int) -> float:
    """LSD in dB: per frame, the RMS over frequency of the power-spectrum difference in dB,
    averaged over frames and waveforms. 0 for identical waveforms."""
    import torchaudio

    a, b = _pair(test, reference)
    spec = torchaudio.transforms.Spectrogram(power=2.0, **stft_settings(sample_rate))
    da = 10.0 * torch.log10(spec(a).clamp_min(_POWER_FLOOR))
    db = 10.0 * torch.log10(spec(b).clamp_min(_POWER_FLOOR))
    per_frame = torch.sqrt(torch.mean((da - db) ** 2, dim=-2))  # (B, frames)
    return float(per_frame.mean())


def snr(test: Any, reference: Any) -> float:
    """Waveform signal-to-noise ratio (dB) of ``test`` against ``reference``; inf if identical."""
    a, b = _pair(test, reference)
    values = []
    for x, y in zip(a, b):
        noise = float(torch.sum((x - y) ** 2))
        signal = float(torch.sum(y**2))
        if noise == 0.0:
            values.append(float("inf"))
        else:
            values.append(10.0 * math.log10(max(signal, 1e-20) / noise))
    return _mean(values)


def _lpips_backbone_available(net: str) -> str | None:
    """None if LPIPS can run offline, else the reason (one line)."""
    try:
        import torchvision  # noqa: F401
        from torchvision import models
    except ImportError:
        return "torchvision is not installed"
    weights = {"alex": "AlexNet_Weights", "vgg": "VGG16_Weights", "squeeze": "SqueezeNet1_1_Weights"}[net]
    url = getattr(models, weights).DEFAULT.url
    import os

    path = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))
    if not os.path.exists(path):
        return f"backbone weights {os.path.basename(url)} are not in {os.path.dirname(path)}"
    return None


def spectrogram_lpips(test: Any, reference: Any, sample_rate: int, net: str = "alex") -> float | None:
    """LPIPS between log-mel spectrograms seen as images, or None when its weights are missing.

    The spectrograms are scaled to [-1, 1] with the reference's range and repeated to three
    channels. Never downloads: without the torchvision backbone checkpoint in the torch hub
    cache this returns None and logs a one-line notice (once per process).
    """
    global _lpips_notice_given
    reason = _lpips_backbone_available(net)
    if reason is not None:
        if not _lpips_notice_given:
            logger.warning("sadakit: spectrogram LPIPS skipped (%s; nothing is downloaded)", reason)
            _lpips_notice_given = True
        return None
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    a, b = _pair(test, reference)
    la, lb = log_mel(a, sample_rate), log_mel(b, sample_rate)
    lo = lb.amin(dim=(-2, -1), keepdim=True)
    hi = lb.amax(dim=(-2, -1), keepdim=True)

    def image(x: torch.Tensor) -> torch.Tensor:
        scaled = (2.0 * (x - lo) / (hi - lo).clamp_min(1e-6) - 1.0).clamp(-1.0, 1.0)
        return scaled.unsqueeze(1).expand(-1, 3, -1, -1)

    metric = LearnedPerceptualImagePatchSimilarity(net_type=net, normalize=False)
    return float(metric(image(la), image(lb)))


def audio_fidelity(test: Any, reference: Any, sample_rate: int) -> dict[str, float | None]:
    """Every audio metric at once: ``log_mel_psnr``, ``lsd``, ``snr``, ``spectrogram_lpips``."""
    return {
        "log_mel_psnr": log_mel_psnr(test, reference, sample_rate),
        "lsd": log_spectral_distance(test, reference, sample_rate),
        "snr": snr(test, reference),
        "spectrogram_lpips": spectrogram_lpips(test, reference, sample_rate),
    }
