"""Scorers: how far a method's output is from the baseline's, one per kind of output, and the
bundled models' judges (absolute quality: does the output still show what the prompt asked for).

The kind comes from the plugin registry (:func:`sadakit.registry.output_kind_of`), never from
the pipeline's class name.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

import torch

from ..registry import output_kind_of

#: ``score(test, reference)`` -> named numbers.
Fidelity = Callable[[torch.Tensor, torch.Tensor], "dict[str, float | None]"]
#: ``judge(outputs, prompt)`` -> named numbers, for outputs all generated for ``prompt``.
Judge = Callable[[torch.Tensor, str], "dict[str, float]"]

LPIPS_NOTICE = "LPIPS not computed: its weights are not available offline"


def image_fidelity(test: torch.Tensor, reference: torch.Tensor, lpips: bool = True) -> dict[str, float | None]:
    """PSNR, SSIM (and LPIPS when its weights are on the machine, else None) of images in [0, 1]."""
    from ..metrics import image

    scores: dict[str, float | None] = {"psnr_db": image.psnr(test, reference), "ssim": image.ssim(test, reference)}
    if lpips:
        scores["lpips"] = image.lpips(test, reference)
    return scores


def audio_fidelity(test: Any, reference: Any, sample_rate: int) -> dict[str, float | None]:
    """Log-mel PSNR, log-spectral distance, SNR and spectrogram LPIPS of waveforms."""
    from ..metrics.audio import audio_fidelity as measure

    return measure(test, reference, sample_rate)


def video_fidelity(test: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """Per-frame PSNR/SSIM and temporal PSNR of (B, F, C, H, W) videos in [0, 1]."""
    from ..metrics.video import video_fidelity as measure

    return measure(test, reference)


def fidelity_for(pipe: Any) -> Fidelity:
    """The fidelity scorer for what ``pipe`` makes (image, audio or video)."""
    kind = output_kind_of(pipe)
    if kind == "audio":
        from ..audio_io import pipeline_sample_rate

        rate = pipeline_sample_rate(pipe)
        return lambda test, reference: audio_fidelity(test, reference, rate)
    if kind == "video":
        return video_fidelity
    return image_fidelity


#: ``bundled:<name>`` -> the module whose ``scorer()`` builds that model's judge.
JUDGES = {"shapes": "sadakit.bundled.shapes.judging", "shapes-dit": "sadakit.bundled.shapes_dit.judging",
          "moving-shapes": "sadakit.bundled.moving_shapes.judging", "notes": "sadakit.bundled.notes.judging"}


def judge_for(pipeline_name: str) -> Judge | None:
    """The bundled model's judge for ``bundled:<name>``, else None (no offline judge exists)."""
    if not pipeline_name.startswith("bundled:"):
        return None
    module = JUDGES.get(pipeline_name.split(":", 1)[1])
    return None if module is None else importlib.import_module(module).scorer()
