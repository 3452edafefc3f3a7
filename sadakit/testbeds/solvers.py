"""diffusers schedulers configured for the testbed, as an extensible table.

Every VP scheduler uses SD's training schedule with ``timestep_spacing="trailing"`` (first
call at t = 999, sigma ~ 14.6) and ends at sigma = 0 where diffusers allows it, so all runs of
one family share one exact reference. ``nfe_to_steps`` maps a target number of denoiser
evaluations to ``num_inference_steps`` (Heun spends two per step except the last).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import diffusers

from .pipeline import SD_SCHEDULE, MODEL_CLASSES, GMMPipeline, _AnalyticModel
from .configs import Testbed


def _one_per_step(nfe: int) -> int:
    return nfe


def _heun_steps(nfe: int) -> int:
    """Heun: 2N - 1 evaluations for N steps; the largest N within the budget."""
    return max(1, (nfe + 1) // 2)


@dataclass(frozen=True)
class SolverSpec:
    """A named scheduler: which model language it needs and how to build it."""

    name: str
    model: str  # key of pipeline.MODEL_CLASSES
    make: Callable[[], object]
    nfe_to_steps: Callable[[int], int] = _one_per_step
    min_steps: int = 1


def _vp(cls_name: str, **kwargs) -> Callable[[], object]:
    def make():
        cls = getattr(diffusers, cls_name)
        return cls(**SD_SCHEDULE, timestep_spacing="trailing", **kwargs)

    return make


SOLVERS: dict[str, SolverSpec] = {}


def register_solver(spec: SolverSpec) -> SolverSpec:
    """Add a solver row (AdaSDE adds its scheduler here)."""
    if spec.name in SOLVERS:
        raise ValueError(f"solver {spec.name!r} already exists")
    SOLVERS[spec.name] = spec
    return spec


for _spec in (
    SolverSpec("ddim", "eps-vp", _vp("DDIMScheduler", set_alpha_to_one=True, steps_offset=0, clip_sample=False)),
    SolverSpec("euler", "eps-vp", _vp("EulerDiscreteScheduler")),
    SolverSpec("euler-karras", "eps-vp", _vp("EulerDiscreteScheduler", use_karras_sigmas=True)),
    SolverSpec("heun", "eps-vp", _vp("HeunDiscreteScheduler"), nfe_to_steps=_heun_steps),
    SolverSpec("dpm++2m", "eps-vp", _vp("DPMSolverMultistepScheduler", solver_order=2, algorithm_type="dpmsolver++", final_sigmas_type="zero")),
    SolverSpec("dpm++3m", "eps-vp", _vp("DPMSolverMultistepScheduler", solver_order=3, algorithm_type="dpmsolver++", final_sigmas_type="zero")),
    SolverSpec("unipc", "eps-vp", _vp("UniPCMultistepScheduler", solver_order=2, final_sigmas_type="zero")),
    SolverSpec("deis", "eps-vp", _vp("DEISMultistepScheduler", solver_order=2)),
    SolverSpec("ipndm", "v-trig", lambda: diffusers.IPNDMScheduler(num_train_timesteps=1000)),
    SolverSpec("flow-euler", "flow", lambda: diffusers.FlowMatchEulerDiscreteScheduler()),
):
    register_solver(_spec)


def make_pipeline(testbed: Testbed | str, solver: str | SolverSpec) -> GMMPipeline:
    """A ``GMMPipeline`` on ``testbed`` with the model language ``solver`` needs."""
    spec = SOLVERS[solver] if isinstance(solver, str) else solver
    model: _AnalyticModel = MODEL_CLASSES[spec.model](testbed)
    return GMMPipeline(model, spec.make())
