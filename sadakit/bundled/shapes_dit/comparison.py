"""Baseline vs SADA on the shapes-dit model: PSNR/SSIM against the baseline and the classifier's adherence."""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..comparison import Comparison, compare_sada
from .judging import ShapesClassifier, adherence, load_classifier
from .model import DEFAULT_GUIDANCE, DEFAULT_STEPS, eval_prompts, generate


def compare(
    pipe: Any,
    config: Any = None,
    config_name: str = "default",
    n_prompts: int = 24,
    seed: int = 0,
    repeats: int = 3,
    num_inference_steps: int = DEFAULT_STEPS,
    guidance_scale: float = DEFAULT_GUIDANCE,
    classifier: ShapesClassifier | None = None,
    on_run: Callable[[str], None] | None = None,
) -> Comparison:
    """Baseline and ``sadakit.accelerate(pipe, config)`` on the first ``n_prompts`` of :func:`eval_prompts`,
    all in one batch (one pipeline call, so a wall time is one generation's)."""
    from sadakit.bench.scorers import image_fidelity

    prompts = eval_prompts(n_prompts)
    classifier = classifier if classifier is not None else load_classifier()

    def run(steps: int) -> torch.Tensor:
        return generate(pipe, prompts, seed, steps, guidance_scale, batch_size=len(prompts))

    return compare_sada(
        pipe, run, prompts, num_inference_steps, lambda test, ref: image_fidelity(test, ref, lpips=False),
        lambda images: adherence(images, prompts, classifier), lambda images: images,
        config, config_name, repeats, on_run,
    )
