"""Baseline vs SADA on the shapes model: PSNR/SSIM against the baseline and the classifier's adherence."""

from __future__ import annotations

from typing import Any, Callable

from ..comparison import Comparison
from ..comparison import comparison_for as _comparison_for
from . import model as shapes_model
from .judging import adherence, load_classifier


def _image_fidelity(test: Any, reference: Any) -> dict[str, float]:
    from sadakit.bench.scorers import image_fidelity

    return image_fidelity(test, reference, lpips=False)


def comparison_for(model: Any) -> Callable[..., Comparison]:
    """``compare`` for a model of the shapes data (its module's prompts, ``generate`` and default
    sampling): the UNet and the DiT model are compared the same way, by the same classifier."""
    return _comparison_for(model, _image_fidelity, adherence, load_classifier, default_prompts=24)


compare = comparison_for(shapes_model)
