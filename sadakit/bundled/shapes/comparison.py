"""Baseline vs SADA on the shapes model: PSNR/SSIM against the baseline and the classifier's adherence."""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..comparison import Comparison, compare_sada
from . import model as shapes_model
from .judging import ShapesClassifier, adherence, load_classifier


def comparison_for(model: Any) -> Callable[..., Comparison]:
    """``compare`` for a model of the shapes data (its module's prompts, ``generate`` and default
    sampling): the UNet and the DiT model are compared the same way, by the same classifier."""

    def compare(
        pipe: Any,
        config: Any = None,
        config_name: str = "default",
        n_prompts: int = 24,
        seed: int = 0,
        repeats: int = 3,
        num_inference_steps: int = model.DEFAULT_STEPS,
        guidance_scale: float = model.DEFAULT_GUIDANCE,
        classifier: ShapesClassifier | None = None,
        on_run: Callable[[str], None] | None = None,
    ) -> Comparison:
        """Baseline and ``sadakit.accelerate(pipe, config)`` on the first ``n_prompts`` evaluation
        prompts, all in one batch (one pipeline call, so a wall time is one generation's)."""
        from sadakit.bench.scorers import image_fidelity

        prompts = model.eval_prompts(n_prompts)
        judge = classifier if classifier is not None else load_classifier()

        def run(steps: int) -> torch.Tensor:
            return model.generate(pipe, prompts, seed, steps, guidance_scale, batch_size=len(prompts))

        return compare_sada(
            pipe, run, prompts, num_inference_steps, lambda test, ref: image_fidelity(test, ref, lpips=False),
            lambda images: adherence(images, prompts, judge), lambda images: images,
            config, config_name, repeats, on_run,
        )

    return compare


compare = comparison_for(shapes_model)
