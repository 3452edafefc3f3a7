"""Baseline vs SADA on the moving-shapes model: per-frame and temporal PSNR/SSIM against the
baseline (:func:`sadakit.bench.scorers.video_fidelity`) and the judge's adherence."""

from __future__ import annotations

from typing import Any

from ..comparison import comparison_for
from . import model as clip_model
from .judging import adherence, load_classifier


def _video_fidelity(test: Any, reference: Any) -> dict[str, float]:
    from sadakit.bench.scorers import video_fidelity

    return video_fidelity(test, reference)


compare = comparison_for(clip_model, _video_fidelity, adherence, load_classifier, default_prompts=16)

__all__ = ["compare"]
