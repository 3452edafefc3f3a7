"""The shipped AdaSDE coefficients for the bundled shapes model load, sample and follow prompts."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from sadakit.adasde import AdaSDEScheduler, CoefficientMismatchError, load_coefficients
from sadakit.bundled import BundledModelError
from sadakit.bundled import shapes
from sadakit.bundled import shapes_adasde as sa


@pytest.fixture(scope="module")
def pipe():
    p = shapes.load_pipeline()
    p.set_progress_bar_config(disable=True)
    return p


def test_shipped_files_name_the_model_and_guidance():
    names = sa.available_shapes_adasde()
    assert {"nfe5.safetensors", "euler-nfe5.safetensors"} <= set(names)
    for name in names:
        meta = load_coefficients(sa.SHAPES_ADASDE_DIR / name).meta
        assert meta.model == sa.SHAPES_MODEL_ID and meta.guidance_scale == 5.0
        assert meta.prediction_type == "v_prediction"
        assert meta.training["seconds"] > 0


def test_learned_churn_euler_at_5_calls_follows_prompts_better_than_plain_euler(pipe):
    """Fixed 16-prompt set, seed 0: measured 100% (learned churn + Euler) vs 75% (5 Euler steps)."""
    prompts = shapes.eval_prompts(16)
    base = pipe.scheduler
    try:
        pipe.scheduler = sa.shapes_adasde_scheduler(pipe, nfe=5, solver="euler")
        images = shapes.generate(pipe, prompts, seed=0, num_inference_steps=5)
        assert pipe.scheduler.nfe == 5
        first = shapes.generate(pipe, prompts[:2], seed=0, num_inference_steps=5)
        again = shapes.generate(pipe, prompts[:2], seed=0, num_inference_steps=5)
        other = shapes.generate(pipe, prompts[:2], seed=7, num_inference_steps=5)
    finally:
        pipe.scheduler = base
    plain = shapes.generate(pipe, prompts, seed=0, num_inference_steps=5)
    learned, euler = shapes.adherence(images, prompts), shapes.adherence(plain, prompts)
    assert learned.all_correct >= 0.9
    assert learned.all_correct > euler.all_correct
    # same seed, same batch: bit-identical (batch size changes float rounding, so compare like with like)
    assert torch.equal(again, first) and not torch.equal(other, first)


def test_wrong_nfe_and_missing_file_are_refused_with_the_pipeline_untouched(pipe, tmp_path, monkeypatch):
    base = pipe.scheduler
    pipe.scheduler = sa.shapes_adasde_scheduler(pipe, nfe=5, solver="adasde")
    try:
        with pytest.raises(CoefficientMismatchError, match="num_inference_steps=5"):
            pipe("a red circle in the top left", num_inference_steps=20)
    finally:
        pipe.scheduler = base
    with pytest.raises(BundledModelError, match="shipped files"):
        sa.shapes_adasde_scheduler(pipe, nfe=11)
    assert pipe.scheduler is base
    with pytest.raises(ValueError, match="already an AdaSDEScheduler"):
        pipe.scheduler = AdaSDEScheduler.from_file(sa.shapes_adasde_path(5), base, model=sa.SHAPES_MODEL_ID)
        sa.shapes_adasde_scheduler(pipe, nfe=5)
    pipe.scheduler = base
    # a corrupted copy is named
    broken = tmp_path / "shapes-adasde"
    shutil.copytree(sa.SHAPES_ADASDE_DIR, broken)
    target = broken / "nfe5.safetensors"
    target.write_bytes(target.read_bytes()[:-7])
    monkeypatch.setattr(sa, "SHAPES_ADASDE_DIR", broken)
    with pytest.raises(BundledModelError, match="corrupted"):
        sa.shapes_adasde_scheduler(pipe, nfe=5, solver="adasde")


def test_demo_runs_the_adasde_part(tmp_path):
    from sadakit.demo import bundled_adasde_part

    row = bundled_adasde_part(tmp_path, quick=True)
    assert row is not None and row.calls_computed == 5 and row.steps == 5
    assert row.method.startswith("AdaSDE: learned multistep")  # the shipped file measured best at NFE 5
    assert row.baseline_s > 0 and row.sada_s > 0
    assert 0.0 <= row.fidelity["adherence_adasde"] <= 1.0 and row.fidelity["psnr_db"] > 10
    assert row.outputs and all(Path(p).is_file() for p in row.outputs)
    assert row.baseline_calls == 50 and row.flops_ratio == pytest.approx(0.1)  # counted, not assumed
    from PIL import Image

    picture = Image.open(row.outputs[0])  # 4 prompts x 32 px, 2 rows of 32 px, with labels drawn on
    assert picture.width > 4 * 32 and picture.height > 2 * 32
