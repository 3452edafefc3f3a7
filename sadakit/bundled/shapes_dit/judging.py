"""The shapes-dit model's judge: the shipped shapes classifier (shape, colour, position).

The same independent CNN that judges the shapes UNet (trained only on generator images, never
on either model's outputs), so the two architectures are scored by one yardstick. Evaluation
code: the model itself (:mod:`.model`) does not need it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch

from sadakit.bundled.shapes.judging import (
    CLASSIFIER_FILE,
    AdherenceResult,
    ShapesClassifier,
    adherence,
    load_classifier,
)
from sadakit.bundled.shapes.judging import scorer as _shapes_scorer

from .model import DEFAULT_GUIDANCE, DEFAULT_STEPS, eval_prompts, generate

if TYPE_CHECKING:
    from diffusers import FluxPipeline

__all__ = ["CLASSIFIER_FILE", "AdherenceResult", "ShapesClassifier", "adherence", "load_classifier", "evaluate",
           "scorer"]


def evaluate(
    pipe: FluxPipeline,
    n_prompts: int | None = None,
    seeds: tuple[int, ...] = (0,),
    num_inference_steps: int = DEFAULT_STEPS,
    guidance_scale: float = DEFAULT_GUIDANCE,
    classifier: ShapesClassifier | None = None,
) -> AdherenceResult:
    """Prompt adherence of ``pipe`` over :func:`eval_prompts` x ``seeds`` (seed ``s`` gives
    image ``i`` the noise seed ``1000 s + i``, as the shapes model's evaluation does)."""
    prompts = eval_prompts(n_prompts)
    all_images, all_prompts = [], []
    for seed in seeds:
        all_images.append(generate(pipe, prompts, 1000 * seed, num_inference_steps, guidance_scale))
        all_prompts += prompts
    return adherence(torch.cat(all_images), all_prompts, classifier)


def scorer(classifier: ShapesClassifier | None = None) -> Callable[[torch.Tensor, str], dict[str, float]]:
    """The bench scorer (``adherence``, ``adherence_attr``): the shapes model's, same classifier."""
    return _shapes_scorer(classifier)
