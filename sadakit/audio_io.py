"""WAV output for audio pipelines, and the audio generation entry point the CLI calls.

Why the stdlib ``wave`` module and not ``torchaudio.save``: from torchaudio 2.9 on, ``save``
delegates to TorchCodec, which is a separate install (missing here and on many machines).
16-bit PCM is all a WAV writer needs to do, so the standard library does it everywhere,
with no optional dependency to fail at the end of a long generation.
"""

from __future__ import annotations

import time
import wave
from pathlib import Path
from typing import Any

import numpy as np
import torch

_PCM_MAX = 32767


def pipeline_sample_rate(pipe: Any) -> int:
    """The output sample rate of an audio pipeline (its vocoder's), e.g. 16000 for MusicLDM."""
    vocoder = getattr(pipe, "vocoder", None)
    rate = getattr(getattr(vocoder, "config", None), "sampling_rate", None)
    if rate is None:
        raise ValueError(
            f"{type(pipe).__name__} has no vocoder with config.sampling_rate; pass sample_rate explicitly"
        )
    return int(rate)


def to_pcm16(waveform: Any) -> np.ndarray:
    """Float samples (nominal range [-1, 1]) -> int16, clipping what lies outside."""
    x = waveform.detach().cpu().float().numpy() if isinstance(waveform, torch.Tensor) else np.asarray(waveform)
    x = np.nan_to_num(x.astype(np.float64), nan=0.0, posinf=1.0, neginf=-1.0)
    return np.round(np.clip(x, -1.0, 1.0) * _PCM_MAX).astype(np.int16)


def _as_clips(waveforms: Any) -> np.ndarray:
    """(B, C, S) float array from (S,) [one mono clip], (B, S) [B mono clips], (B, C, S)."""
    x = waveforms.detach().cpu().float().numpy() if isinstance(waveforms, torch.Tensor) else np.asarray(waveforms)
    if x.ndim == 1:
        return x[None, None, :]
    if x.ndim == 2:
        return x[:, None, :]
    if x.ndim == 3:
        return x
    raise ValueError(f"expected waveforms of shape (S,), (B, S) or (B, C, S), got {x.shape}")


def write_wav(path: str | Path, waveforms: Any, sample_rate: int) -> list[Path]:
    """Write 16-bit PCM WAV files; returns the paths written.

    One clip goes to ``path``; a batch of B > 1 clips goes to ``<stem>_0.wav`` ...
    ``<stem>_{B-1}.wav`` next to it (the layout of a pipeline's ``audios``: (B, S) mono clips,
    or (B, C, S) with C channels). Parent directories are created.
    """
    if not isinstance(sample_rate, int) or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive integer, got {sample_rate!r}")
    clips = _as_clips(waveforms)
    path = Path(path)
    if path.suffix.lower() != ".wav":
        path = path.with_suffix(".wav")
    path.parent.mkdir(parents=True, exist_ok=True)
    targets = [path] if len(clips) == 1 else [path.with_name(f"{path.stem}_{i}.wav") for i in range(len(clips))]
    for target, clip in zip(targets, clips):
        pcm = to_pcm16(clip)  # (C, S)
        with wave.open(str(target), "wb") as f:
            f.setnchannels(pcm.shape[0])
            f.setsampwidth(2)
            f.setframerate(sample_rate)
            f.writeframes(np.ascontiguousarray(pcm.T).astype("<i2").tobytes())  # interleaved frames
    return targets


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """(C, S) float32 in [-1, 1] and the sample rate of a 16-bit PCM WAV file."""
    with wave.open(str(path), "rb") as f:
        if f.getsampwidth() != 2:
            raise ValueError(f"{path}: only 16-bit PCM is supported, got {8 * f.getsampwidth()}-bit")
        channels, rate = f.getnchannels(), f.getframerate()
        data = np.frombuffer(f.readframes(f.getnframes()), dtype="<i2")
    return (data.reshape(-1, channels).T / _PCM_MAX).astype(np.float32), rate


def generate_audio(
    pipe: Any,
    prompt: str | list[str],
    steps: int,
    seed: int,
    accelerate: bool,
    out_path: str | Path,
    *,
    audio_length_in_s: float | None = None,
    guidance_scale: float | None = None,
    config: Any = None,
) -> dict:
    """Generate audio for ``prompt`` and write WAV files at the pipeline's sample rate.

    ``accelerate=True`` runs SADA: a plain pipeline is accelerated for this call (the family's
    defaults, or ``config``) and restored afterwards; an already accelerated one is used as is
    (or re-configured when ``config`` is given, and then left that way). ``accelerate=False``
    uses the pipeline exactly as the caller set it up (plain, or accelerated by the caller).
    A MusicLDM pipeline gets the transformers-5 CLAP fix
    (:func:`sadakit.plugins.audio.fix_musicldm`) so that a plain run works too.

    Returns ``paths``, ``sample_rate``, ``seconds`` (audio length), ``wall_seconds``,
    ``accelerated`` (whether SADA ran) and ``report`` (``GenerationReport.to_dict()`` or None).
    """
    import sadakit
    from sadakit.plugins.audio import fix_musicldm

    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    rate = pipeline_sample_rate(pipe)
    if any(c.__name__ == "MusicLDMPipeline" for c in type(pipe).__mro__):
        fix_musicldm(pipe)
    was_accelerated = sadakit.is_accelerated(pipe)
    kwargs: dict[str, Any] = {}
    if audio_length_in_s is not None:
        kwargs["audio_length_in_s"] = audio_length_in_s
    if guidance_scale is not None:
        kwargs["guidance_scale"] = guidance_scale
    if accelerate and (not was_accelerated or config is not None):
        sadakit.accelerate(pipe, config)
    accelerated = sadakit.is_accelerated(pipe)
    try:
        started = time.perf_counter()
        audios = pipe(
            prompt,
            num_inference_steps=steps,
            generator=torch.Generator("cpu").manual_seed(seed),
            output_type="np",
            **kwargs,
        ).audios
        wall = time.perf_counter() - started
        report = sadakit.report(pipe).to_dict() if accelerated else None
    finally:
        if accelerated and not was_accelerated:
            sadakit.remove(pipe)
    paths = write_wav(out_path, audios, rate)
    return {
        "paths": [str(p) for p in paths],
        "sample_rate": rate,
        "seconds": float(np.asarray(audios).shape[-1]) / rate,
        "wall_seconds": wall,
        "accelerated": accelerated,
        "report": report,
    }
