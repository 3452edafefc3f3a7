"""The shipped multistep AdaSDE files of the bundled models: valid, picked by default, ahead of Euler (shapes)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sadakit.adasde import load_coefficients
from sadakit.bundled.adasde_files import BUNDLED_ADASDE, SHAPES
from sadakit.core.adasde import multistep_effective_weights


#: the models whose measured best files are multistep (moving-shapes: learned-grid Euler); shapes-dit is a flow
#: model, so its file learns the interior grid only (learned ends are VP-only)
MULTISTEP_MODELS = ("shapes", "notes", "shapes-dit")


@pytest.mark.parametrize("spec", [BUNDLED_ADASDE[name] for name in MULTISTEP_MODELS], ids=MULTISTEP_MODELS)
def test_shipped_multistep_files_are_the_measured_best_and_learned_their_weights(spec) -> None:
    best = [entry for entry in spec.best if entry[1] == "multistep"]
    assert best, f"the {spec.name} spec names no multistep file as its best"
    shipped = [n for n in spec.available() if n.startswith("multistep-")]
    assert sorted(shipped) == sorted(spec.path(nfe).name for nfe, *_ in best)  # every shipped one is a default
    for nfe, solver, deterministic, learned in best:
        path = spec.path(nfe)
        ends = learned == "ends"
        assert path.name == f"multistep-nfe{nfe}-gamma0-{'ends' if ends else 'lgrid'}.safetensors"
        cf = load_coefficients(path)
        assert cf.meta.solver == "multistep" and cf.meta.nfe == nfe == cf.meta.steps and not cf.meta.analytic_first_step
        assert cf.meta.gamma_max == 0.0 and (cf.meta.grid_ends is not None) == ends == (float(cf.sigmas[-1]) == 0.0)
        assert cf.meta.training["learn_ends"] is ends and cf.meta.training["step_weight"] == 0.0
        assert cf.meta.model == spec.model_id and cf.meta.guidance_scale == spec.guidance_scale
        # trained away from its Euler start: some history weight or exponent scale moved
        weights = multistep_effective_weights(cf.sigmas, cf.raw)
        assert max(abs(w1) + abs(w2) + abs(kappa - 1.0) for w1, w2, kappa in weights) > 0.05


@pytest.mark.slow
def test_shipped_multistep_nfe5_is_closer_to_the_50_step_output_than_euler_on_its_tuned_grid() -> None:
    """8 prompts, seeds 900+: measured in docs/adasde.md (48 prompts, seed 500+: +2.8 dB)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from bench_adasde_grids import loglinear, make_scheduler

    from sadakit.bundled import shapes

    pipe = shapes.load_pipeline()
    pipe.set_progress_bar_config(disable=True)
    prompts = shapes.eval_prompts(8)
    base = pipe.scheduler
    reference = shapes.generate(pipe, prompts, seed=900, num_inference_steps=50)
    try:
        pipe.scheduler = SHAPES.scheduler(pipe, 5)
        ours = shapes.generate(pipe, prompts, seed=900, num_inference_steps=5)
        pipe.scheduler = make_scheduler("euler", "default", base.config, loglinear(5, 14.6, 0.3))
        euler = shapes.generate(pipe, prompts, seed=900, num_inference_steps=5)
    finally:
        pipe.scheduler = base

    def psnr(x: torch.Tensor) -> float:
        mse = (x.float() - reference.float()).pow(2).flatten(1).mean(1)
        return float(np.mean([-10 * math.log10(max(float(m), 1e-12)) for m in mse]))

    assert psnr(ours) > psnr(euler) + 0.5
