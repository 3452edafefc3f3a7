"""AdaSDE coefficients distilled for the bundled notes model (MusicLDM), and the scheduler built from them.

Why shipped: distilling through the notes pipeline takes minutes of CPU
(``benchmarks/bench_adasde_bundled.py --model notes`` records how many). The files fit the
notes model at guidance :data:`~sadakit.bundled.notes.DEFAULT_GUIDANCE` and the NFE in their
name only; everything else is refused (:mod:`sadakit.bundled.adasde_files`).

    pipe = notes.load_pipeline()
    pipe.scheduler = notes.adasde_scheduler(pipe, nfe=5, solver="euler")
    audio = notes.generate(pipe, prompts, num_inference_steps=5)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .adasde_files import NOTES

__all__ = ["NOTES_ADASDE_DIR", "NOTES_MODEL_ID", "available_notes_adasde", "notes_adasde_path", "notes_adasde_scheduler"]

NOTES_ADASDE_DIR = NOTES.directory
#: The model name the shipped files were distilled under (checked when loading).
NOTES_MODEL_ID = NOTES.model_id


def notes_adasde_path(nfe: int, solver: str | None = None, deterministic: bool | None = None,
                      root: Path | None = None, learned_grid: bool | None = None) -> Path:
    """``nfe5.safetensors`` (AdaSDE), ``euler-nfe5.safetensors`` (churn + Euler), ``...-gamma0`` (ablation),
    ``...-lgrid`` (learned grid); no ``solver``: the default file at ``nfe`` (the measured best)."""
    return NOTES.path(nfe, solver, deterministic, root or NOTES_ADASDE_DIR, learned_grid)


def available_notes_adasde(root: Path | None = None) -> list[str]:
    """File names of the shipped coefficient files (without checkpoints)."""
    return NOTES.available(root or NOTES_ADASDE_DIR)


def notes_adasde_scheduler(pipe: Any, nfe: int = 5, solver: str | None = None, deterministic: bool | None = None,
                           guidance_scale: float | None = None, learned_grid: bool | None = None) -> Any:
    """An ``AdaSDEScheduler`` for the bundled notes pipeline from the shipped file
    (:meth:`~sadakit.bundled.adasde_files.BundledAdaSDE.scheduler`; no ``solver``: the file
    measured best at ``nfe``)."""
    return NOTES.scheduler(pipe, nfe, solver, deterministic, guidance_scale, root=NOTES_ADASDE_DIR,
                           learned_grid=learned_grid)
