"""Shipped AdaSDE coefficient files of the bundled models, and the schedulers built from them.

Why one module for every bundled model: a coefficient file only fits the model, NFE and
guidance it was distilled for, and the naming of the files, the integrity check and the
refusals are the same whatever the model. Each bundled model is one :class:`BundledAdaSDE`
(its directory, the model id the files were distilled under, its guidance and pipeline
class); ``shapes_adasde`` and ``notes_adasde`` are thin entry points over it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._files import MODELS_DIR, BundledModelError, check_model_dir

#: AdaSDE's own step, the learned churn in front of a base solver (the paper's plugin form), or the
#: learned multistep form (weights of the current and two previous denoised estimates).
SOLVER_FORMS = ("adasde", "euler", "heun", "midpoint", "multistep")
#: ``learned_grid`` values: no learned grid, the interior learned (``True``, ``-lgrid``), or the whole
#: grid with its ends and a last step to 0 (``"ends"``, ``-ends``; docs/adasde.md)
GRID_FORMS: dict[bool | str, str] = {False: "", True: "-lgrid", "ends": "-ends"}
LearnedGrid = bool | str


@dataclass(frozen=True)
class BundledAdaSDE:
    """Where one bundled model's coefficient files live and what they were distilled under."""

    name: str  # "shapes", "notes": the ``bundled:<name>`` pipeline
    directory: Path
    model_id: str  # stored in every file (with the denoiser's fingerprint); ``from_file`` checks both
    guidance_scale: float  # the guidance the files were distilled (and must be sampled) at
    pipeline_class: str  # class name of the pipeline the files belong to
    #: top of the distillation grid, when the default (``VP_SIGMA_CAP``) is not this model's best
    sigma_max: float | None = None
    #: per NFE, the shipped file measured best (docs/adasde.md): ``(nfe, solver, deterministic, learned_grid)``;
    #: ``scheduler`` uses it when the caller names no solver form
    best: tuple[tuple[int, str, bool, LearnedGrid], ...] = ()

    def form(self, nfe: int) -> tuple[str, bool, LearnedGrid]:
        """``(solver, deterministic, learned_grid)`` of the default file at ``nfe``: the measured best, else churn + Euler."""
        for n, solver, deterministic, learned_grid in self.best:
            if n == nfe:
                return solver, deterministic, learned_grid
        return "euler", False, False

    def resolve(self, nfe: int, solver: str | None, deterministic: bool | None,
                learned_grid: LearnedGrid | None) -> tuple[str, bool, LearnedGrid]:
        """The file's form: no ``solver`` means the measured best at ``nfe``; a named one defaults to the plain file."""
        if solver is None:
            best_solver, best_deterministic, best_grid = self.form(nfe)
            return (best_solver, best_deterministic if deterministic is None else bool(deterministic),
                    best_grid if learned_grid is None else _grid_form(learned_grid))
        return solver, bool(deterministic), _grid_form(learned_grid or False)

    def path(self, nfe: int, solver: str | None = None, deterministic: bool | None = None, root: Path | None = None,
             learned_grid: LearnedGrid | None = None) -> Path:
        """``nfe5.safetensors`` (AdaSDE), ``euler-nfe5.safetensors`` (churn + Euler), ``...-gamma0`` (ablation),
        ``...-lgrid`` (the sigma grid learned with the coefficients), ``...-ends`` (the whole grid, its ends
        included); no ``solver``: the default file at ``nfe``."""
        solver, deterministic, learned_grid = self.resolve(nfe, solver, deterministic, learned_grid)
        if solver not in SOLVER_FORMS:
            raise ValueError(f"solver={solver!r} is not allowed; allowed: {', '.join(SOLVER_FORMS)}")
        stem = f"nfe{nfe}" if solver == "adasde" else f"{solver}-nfe{nfe}"
        stem += "-gamma0" if deterministic else ""
        stem += GRID_FORMS[learned_grid]
        return (root or self.directory) / f"{stem}.safetensors"

    def available(self, root: Path | None = None) -> list[str]:
        """File names of the shipped coefficient files (without checkpoints)."""
        directory = root or self.directory
        if not directory.is_dir():
            return []
        return sorted(p.name for p in directory.glob("*.safetensors") if not p.name.endswith(".ckpt.safetensors"))

    def scheduler(
        self,
        pipe: Any,
        nfe: int = 5,
        solver: str | None = None,
        deterministic: bool | None = None,
        guidance_scale: float | None = None,
        root: Path | None = None,
        learned_grid: LearnedGrid | None = None,
    ) -> Any:
        """An ``AdaSDEScheduler`` for this bundled pipeline from the shipped file.

        With no ``solver`` the file is the one measured best at ``nfe`` (:meth:`form`); a named
        ``solver`` picks that form's file (``deterministic`` and ``learned_grid`` default to
        False). ``pipe`` supplies the training schedule through its current scheduler (pass the
        pipeline as loaded, not one already switched to AdaSDE). ``guidance_scale`` is the
        guidance the caller will sample at (default: the model's); another value than the
        file's is refused, as is a pipeline of another class. Call the pipeline with
        ``num_inference_steps=nfe``.
        """
        from sadakit.adasde import AdaSDEScheduler

        solver, deterministic, learned_grid = self.resolve(nfe, solver, deterministic, learned_grid)

        kind = type(pipe).__name__
        if kind != self.pipeline_class:
            raise ValueError(
                f"the shipped {self.name} AdaSDE coefficients belong to the bundled {self.model_id} "
                f"({self.pipeline_class}); got a {kind}"
            )
        path = self.path(nfe, solver, deterministic, root, learned_grid)
        if not path.is_file():
            shipped = ", ".join(self.available(root)) or "none"
            raise BundledModelError(f"no shipped AdaSDE coefficients at {path}; shipped files: {shipped}")
        check_model_dir(path.parent, (path.name,))
        if isinstance(pipe.scheduler, AdaSDEScheduler):
            raise ValueError("pipe.scheduler is already an AdaSDEScheduler; pass the pipeline with its own scheduler")
        guidance = self.guidance_scale if guidance_scale is None else guidance_scale
        # pipe=: the shipped files record the bundled denoiser's fingerprint, so a pipeline whose
        # denoiser was swapped for another model is refused too, not only another pipeline class
        return AdaSDEScheduler.from_file(path, pipe.scheduler, pipe=pipe, model=self.model_id, guidance_scale=guidance)


def _grid_form(value: LearnedGrid) -> LearnedGrid:
    """A ``learned_grid`` argument checked: False, True or "ends" (one line naming what is allowed)."""
    if isinstance(value, bool) or value in GRID_FORMS:
        return value
    raise ValueError(f"learned_grid={value!r} is not allowed; allowed: False, True (interior learned), 'ends' "
                     "(the whole grid with its ends)")


def _shapes() -> BundledAdaSDE:
    from .shapes import DEFAULT_GUIDANCE

    # steps above sigma ~20 are wasted on this model: Euler NFE 5 from 80 / 20 / 14.6: 21.9 / 26.5 / 26.0 dB.
    # At NFE 3, 5 and 7 the learned multistep files (weights and the whole grid, from Euler) are the best shipped
    # ones and beat diffusers' Euler on its tuned grid, the best diffusers row, by +2.3 / +2.7 / +1.7 dB on other
    # seeds than they were distilled on (docs/adasde.md, "Third round"); before them the learned-grid Euler file
    # was the NFE-5 default (it ties that row).
    return BundledAdaSDE("shapes", MODELS_DIR / "shapes-adasde", "sadakit/bundled/shapes-sd", DEFAULT_GUIDANCE,
                         "StableDiffusionPipeline", sigma_max=14.6,
                         best=((3, "multistep", True, "ends"), (5, "multistep", True, "ends"), (7, "multistep", True, "ends")))


def _notes() -> BundledAdaSDE:
    from .notes import DEFAULT_GUIDANCE

    # at NFE 3, 5 and 7 the learned multistep files (weights and the whole grid, from DPM-Solver++ 2M) are the best
    # shipped ones and beat DEIS on its best grid, the best diffusers row, by +1.6 / +2.1 / +1.6 dB log-mel on other
    # seeds than they were distilled on (docs/adasde.md, "Third round"; the NFE-3 start grid was chosen on a third
    # seed set). Before them the learned-grid Euler file was the NFE-5 default (it ties DEIS).
    return BundledAdaSDE("notes", MODELS_DIR / "notes-adasde", "sadakit/bundled/notes-musicldm", DEFAULT_GUIDANCE,
                         "MusicLDMPipeline", best=((3, "multistep", True, "ends"), (5, "multistep", True, "ends"),
                                                   (7, "multistep", True, "ends")))


def _shapes_dit() -> BundledAdaSDE:
    from .shapes_dit.model import DEFAULT_GUIDANCE

    # a flow model: no analytic first step (NFE = 2 steps for AdaSDE's own step, steps for the Euler form);
    # guidance is the true-CFG scale (two transformer calls per evaluation). At NFE 5 the learned multistep file
    # (weights and the interior grid, from Euler on the best diffusers row's grid, teacher 8x finer) beats that row,
    # FlowMatchEuler on its tuned grid, by +1.7 dB (96 images; docs/benchmarks.md section 10); NFE 7 ties it.
    return BundledAdaSDE("shapes-dit", MODELS_DIR / "shapes-dit-adasde", "sadakit/bundled/shapes-dit", DEFAULT_GUIDANCE,
                         "FluxPipeline", best=((5, "multistep", True, True),))


def _moving_shapes() -> BundledAdaSDE:
    from .moving_shapes.model import DEFAULT_GUIDANCE

    # a flow model like shapes-dit; guidance is WanPipeline's CFG (two transformer calls per evaluation). The
    # learned-grid Euler files beat the best diffusers row (Euler on a tuned grid at NFE 5, DPM-Solver++ 2M with
    # flow_shift 3 at NFE 7) by +1.20 / +1.90 dB, outside the noise (96 clips; docs/benchmarks.md section 11)
    return BundledAdaSDE("moving-shapes", MODELS_DIR / "moving-shapes-adasde", "sadakit/bundled/moving-shapes",
                         DEFAULT_GUIDANCE, "WanPipeline", best=((5, "euler", True, True), (7, "euler", True, True)))


SHAPES = _shapes()
NOTES = _notes()
#: the bundled Flux model's spec (the learned multistep file at NFE 5)
SHAPES_DIT = _shapes_dit()
#: the bundled Wan model's spec (learned-grid Euler files at NFE 5 and 7)
MOVING_SHAPES = _moving_shapes()
BUNDLED_ADASDE = {spec.name: spec for spec in (SHAPES, NOTES, SHAPES_DIT, MOVING_SHAPES)}
#: every bundled model's id in coefficient files, shipped files or not (``adasde distill`` stores it)
BUNDLED_MODEL_IDS = {spec.name: spec.model_id for spec in (SHAPES, NOTES, SHAPES_DIT, MOVING_SHAPES)}


def bundled_adasde(name: str) -> BundledAdaSDE:
    """The spec of ``name`` (``"shapes"``, ``"notes"``, ``"shapes-dit"`` or ``"moving-shapes"``); ValueError naming
    the allowed ones."""
    if name not in BUNDLED_ADASDE:
        raise ValueError(f"no bundled model {name!r} with AdaSDE coefficients; allowed: {', '.join(BUNDLED_ADASDE)}")
    return BUNDLED_ADASDE[name]

