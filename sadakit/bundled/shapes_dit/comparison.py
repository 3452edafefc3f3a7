"""Baseline vs SADA on the shapes-dit model: PSNR/SSIM against the baseline and the classifier's
adherence, exactly as for the shapes UNet (:func:`sadakit.bundled.shapes.comparison.comparison_for`)."""

from __future__ import annotations

from ..shapes.comparison import comparison_for
from . import model as dit_model

compare = comparison_for(dit_model)

__all__ = ["compare"]
