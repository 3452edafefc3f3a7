"""AdaSDE coefficients distilled for the bundled shapes model, and the scheduler built from them.

Why shipped: distilling takes minutes (``benchmarks/bench_adasde_bundled.py`` records how
many), and the demo and the bench should show AdaSDE on a trained model without making
every user pay for it. A file only fits the model, NFE and guidance it was distilled for;
``AdaSDEScheduler.from_file`` checks all three. The shared machinery is
:mod:`sadakit.bundled.adasde_files`; this module keeps the shapes names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .adasde_files import SHAPES, SOLVER_FORMS

__all__ = ["SHAPES_ADASDE_DIR", "SHAPES_MODEL_ID", "SOLVER_FORMS", "available_shapes_adasde", "shapes_adasde_path",
           "shapes_adasde_scheduler"]

SHAPES_ADASDE_DIR = SHAPES.directory
#: The model name the shipped files were distilled under (checked when loading).
SHAPES_MODEL_ID = SHAPES.model_id


def shapes_adasde_path(nfe: int, solver: str | None = None, deterministic: bool | None = None,
                       root: Path | None = None, learned_grid: bool | None = None) -> Path:
    """``nfe5.safetensors`` (AdaSDE), ``euler-nfe5.safetensors`` (churn + Euler), ``...-gamma0`` (ablation),
    ``...-lgrid`` (learned grid); no ``solver``: the default file at ``nfe`` (the measured best)."""
    return SHAPES.path(nfe, solver, deterministic, root or SHAPES_ADASDE_DIR, learned_grid)


def available_shapes_adasde(root: Path | None = None) -> list[str]:
    """File names of the shipped coefficient files (without checkpoints)."""
    return SHAPES.available(root or SHAPES_ADASDE_DIR)


def shapes_adasde_scheduler(pipe: Any, nfe: int = 5, solver: str | None = None, deterministic: bool | None = None,
                            guidance_scale: float | None = None, learned_grid: bool | None = None) -> Any:
    """An ``AdaSDEScheduler`` for the bundled shapes pipeline from the shipped file
    (:meth:`~sadakit.bundled.adasde_files.BundledAdaSDE.scheduler`; no ``solver``: the file
    measured best at ``nfe``). Call the pipeline with
    ``num_inference_steps=nfe`` and ``guidance_scale=DEFAULT_GUIDANCE``."""
    return SHAPES.scheduler(pipe, nfe, solver, deterministic, guidance_scale, root=SHAPES_ADASDE_DIR,
                            learned_grid=learned_grid)
