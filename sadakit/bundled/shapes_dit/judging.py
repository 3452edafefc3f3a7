"""The shapes-dit model's judge: the shipped shapes classifier (shape, colour, position).

The same independent CNN that judges the shapes UNet (trained only on generator images, never
on either model's outputs), so the two architectures are scored by one yardstick. Evaluation
code: the model itself (:mod:`.model`) does not need it.
"""

from __future__ import annotations

from typing import Callable

import torch

from sadakit.bundled.shapes.judging import (
    CLASSIFIER_FILE,
    AdherenceResult,
    ShapesClassifier,
    adherence,
    evaluator_for,
    load_classifier,
)
from sadakit.bundled.shapes.judging import scorer as _shapes_scorer

from . import model as dit_model

__all__ = ["CLASSIFIER_FILE", "AdherenceResult", "ShapesClassifier", "adherence", "load_classifier", "evaluate",
           "scorer"]

#: prompt adherence of a shapes-dit pipeline over its evaluation prompts x seeds
evaluate = evaluator_for(dit_model)


def scorer(classifier: ShapesClassifier | None = None) -> Callable[[torch.Tensor, str], dict[str, float]]:
    """The bench scorer (``adherence``, ``adherence_attr``): the shapes model's, same classifier."""
    return _shapes_scorer(classifier)
