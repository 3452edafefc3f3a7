"""Baseline vs SADA on the moving-shapes model: per-frame and temporal PSNR/SSIM against the
baseline (:func:`sadakit.bench.scorers.video_fidelity`) and the judge's adherence."""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..comparison import Comparison, compare_sada
from . import model as clip_model
from .judging import FrameClassifier, adherence, load_classifier


def compare(
    pipe: Any,
    config: Any = None,
    config_name: str = "default",
    n_prompts: int = 16,
    seed: int = 0,
    repeats: int = 3,
    num_inference_steps: int = clip_model.DEFAULT_STEPS,
    guidance_scale: float = clip_model.DEFAULT_GUIDANCE,
    classifier: FrameClassifier | None = None,
    on_run: Callable[[str], None] | None = None,
) -> Comparison:
    """Baseline and ``sadakit.accelerate(pipe, config)`` on the first ``n_prompts`` evaluation
    prompts, all in one batch (one pipeline call, so a wall time is one generation's)."""
    from sadakit.bench.scorers import video_fidelity

    prompts = clip_model.eval_prompts(n_prompts)
    judge = classifier if classifier is not None else load_classifier()

    def run(steps: int) -> torch.Tensor:
        return clip_model.generate(pipe, prompts, seed, steps, guidance_scale, batch_size=len(prompts))

    return compare_sada(
        pipe, run, prompts, num_inference_steps, video_fidelity, lambda clips: adherence(clips, prompts, judge),
        lambda clips: clips, config, config_name, repeats, on_run,
    )


__all__ = ["compare"]
