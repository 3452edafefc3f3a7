"""Shipped learned-grid AdaSDE files of the bundled models: valid, carrying their grid, picked by default."""

from __future__ import annotations

import pytest
import torch

from sadakit.adasde import load_coefficients
from sadakit.bundled.adasde_files import BUNDLED_ADASDE, SHAPES


@pytest.mark.parametrize("spec", list(BUNDLED_ADASDE.values()), ids=list(BUNDLED_ADASDE))
def test_learned_grid_files_carry_their_grid_and_model(spec) -> None:
    names = [n for n in spec.available() if n.endswith(("-lgrid.safetensors", "-ends.safetensors"))]
    for name in names:
        cf = load_coefficients(spec.directory / name)
        assert cf.meta.schedule == "learned" and cf.meta.grid_logits is not None
        assert torch.allclose(cf.sigmas, cf.meta.learned_grid, rtol=1e-9)
        # a learned-ends file ends with a step to 0, the others at their fixed bottom
        assert (cf.meta.grid_ends is not None) == name.endswith("-ends.safetensors") == (float(cf.sigmas[-1]) == 0.0)
        assert cf.meta.model == spec.model_id and cf.meta.model_fingerprint is not None
        assert cf.meta.training["learn_grid"] is True and cf.meta.training["seconds"] > 0
    # every "best" entry names a shipped file
    for nfe, solver, deterministic, learned in spec.best:
        assert spec.path(nfe, solver, deterministic, learned_grid=learned).is_file()


def test_path_names_the_learned_grid() -> None:
    assert SHAPES.path(5, "euler", True, learned_grid=True).name == "euler-nfe5-gamma0-lgrid.safetensors"
    assert SHAPES.path(5, "euler", True, learned_grid="ends").name == "euler-nfe5-gamma0-ends.safetensors"
    with pytest.raises(ValueError, match="learned_grid='x' is not allowed"):
        SHAPES.path(5, "euler", True, learned_grid="x")
    assert SHAPES.path(5, "adasde").name == "nfe5.safetensors"  # the old names are unchanged
    assert SHAPES.form(99) == ("euler", False, False)  # no measured best: the old default
    assert SHAPES.path(99).name == "euler-nfe99.safetensors"
    for nfe, solver, deterministic, learned in SHAPES.best:  # no form named: the measured best
        assert SHAPES.path(nfe) == SHAPES.path(nfe, solver, deterministic, learned_grid=learned)


def test_default_scheduler_is_the_measured_best_file() -> None:
    from sadakit.bundled import shapes

    pipe = shapes.load_pipeline()
    for nfe, solver, deterministic, learned in SHAPES.best:
        sched = SHAPES.scheduler(pipe, nfe)
        expected = load_coefficients(SHAPES.path(nfe, solver, deterministic, learned_grid=learned))
        assert torch.equal(sched.coefficients.sigmas, expected.sigmas)
        assert sched.meta.solver == solver and (sched.meta.grid_logits is not None) == bool(learned)
        assert (sched.meta.grid_ends is not None) == (learned == "ends")
    # naming a form still gives that form's old file
    old = SHAPES.scheduler(pipe, 5, solver="euler")
    assert old.meta.grid_logits is None and old.meta.schedule == "karras"
