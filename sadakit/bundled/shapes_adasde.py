"""AdaSDE coefficients distilled for the bundled shapes model, and the scheduler built from them.

Why shipped: distilling takes minutes (``benchmarks/bench_adasde_bundled.py`` records how
many), and the demo and the bench should show AdaSDE on a trained model without making
every user pay for it. A file only fits the model, NFE and guidance it was distilled for;
``AdaSDEScheduler.from_file`` checks all three.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ._files import MODELS_DIR, BundledModelError, check_model_dir

SHAPES_ADASDE_DIR = MODELS_DIR / "shapes-adasde"
#: The model name the shipped files were distilled under (checked when loading).
SHAPES_MODEL_ID = "sadakit/bundled/shapes-sd"
#: AdaSDE's own step, or the learned churn in front of a base solver (the paper's plugin form).
SOLVER_FORMS = ("adasde", "euler", "heun", "midpoint")


def shapes_adasde_path(nfe: int, solver: str = "euler", deterministic: bool = False, root: Path | None = None) -> Path:
    """``nfe5.safetensors`` (AdaSDE), ``euler-nfe5.safetensors`` (churn + Euler), ``...-gamma0`` (ablation)."""
    if solver not in SOLVER_FORMS:
        raise ValueError(f"solver={solver!r} is not allowed; allowed: {', '.join(SOLVER_FORMS)}")
    stem = f"nfe{nfe}" if solver == "adasde" else f"{solver}-nfe{nfe}"
    return (root or SHAPES_ADASDE_DIR) / (f"{stem}-gamma0.safetensors" if deterministic else f"{stem}.safetensors")


def available_shapes_adasde(root: Path | None = None) -> list[str]:
    """File names of the shipped coefficient files (without checkpoints)."""
    directory = root or SHAPES_ADASDE_DIR
    if not directory.is_dir():
        return []
    return sorted(p.name for p in directory.glob("*.safetensors") if not p.name.endswith(".ckpt.safetensors"))


def shapes_adasde_scheduler(pipe: Any, nfe: int = 5, solver: str = "euler", deterministic: bool = False) -> Any:
    """An ``AdaSDEScheduler`` for the bundled shapes pipeline from the shipped file.

    ``pipe`` is the pipeline whose current scheduler supplies the training schedule (pass the
    pipeline as loaded, not one already switched to AdaSDE). Call the pipeline with
    ``num_inference_steps=nfe`` and ``guidance_scale=DEFAULT_GUIDANCE``.
    """
    from sadakit.adasde import AdaSDEScheduler

    from .shapes import DEFAULT_GUIDANCE

    path = shapes_adasde_path(nfe, solver, deterministic)
    if not path.is_file():
        shipped = ", ".join(available_shapes_adasde()) or "none"
        raise BundledModelError(f"no shipped AdaSDE coefficients at {path}; shipped files: {shipped}")
    check_model_dir(path.parent, (path.name,))
    if isinstance(pipe.scheduler, AdaSDEScheduler):
        raise ValueError("pipe.scheduler is already an AdaSDEScheduler; pass the pipeline with its own scheduler")
    return AdaSDEScheduler.from_file(path, pipe.scheduler, model=SHAPES_MODEL_ID, guidance_scale=DEFAULT_GUIDANCE)
