"""sadakit.tune: the cheapest budget that holds a target, kept on held-out seeds; presets."""

import json

import pytest
import torch

import sadakit
from sadakit.testbeds.solvers import make_pipeline
from sadakit.tuning import DEFAULT_BUDGETS, PLAN_SHAPES, held_fraction, row_psnr_db


def _generate(pipe, prompt, seed, steps):
    return pipe(batch_size=128, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed)).samples


@pytest.fixture(scope="module")
def testbed():
    return make_pipeline("gmm64-16", "euler")


def test_tuned_budget_holds_its_target_on_held_out_seeds(testbed):
    preset = sadakit.tune(testbed, [None], target=40.0, steps=30, seeds=(0, 1), generate=_generate)
    budget = preset.config.budget
    # measured (10th percentile of 128 rows, seeds 0, 1, 7, 8, 9): 0.16 -> 34-40 dB, 0.2 -> 43-44 dB
    assert budget in DEFAULT_BUDGETS and budget < 0.5
    assert preset.held >= 0.9 and preset.calibration_outputs == 256
    cheaper = max(b for b in DEFAULT_BUDGETS if b < budget)
    references = [_generate(testbed, None, seed, 30) for seed in (0, 1)]

    def held(config):
        sadakit.accelerate(testbed, config)
        try:
            psnrs = torch.cat([row_psnr_db(_generate(testbed, None, seed, 30), ref)
                               for seed, ref in zip((0, 1), references)])
        finally:
            sadakit.remove(testbed)
        return held_fraction(psnrs, 40.0)

    for shape in PLAN_SHAPES:  # the next cheaper budget does not hold, in any shape
        assert held(sadakit.SADAConfig(budget=cheaper, **shape)) < 0.9, shape
    # the shape returned is the first one that holds at that budget
    index = next(i for i, sh in enumerate(PLAN_SHAPES) if sadakit.SADAConfig(budget=budget, **sh) == preset.config)
    for earlier in PLAN_SHAPES[:index]:
        assert held(sadakit.SADAConfig(budget=budget, **earlier)) < 0.9, earlier
    budget_only = sadakit.tune(testbed, [None], target=40.0, steps=30, seeds=(0, 1), generate=_generate,
                               plan_shapes=({},))
    assert budget_only.config.budget >= budget  # more shapes can only find a budget as cheap or cheaper
    for seed in (7, 8):  # held out
        reference = _generate(testbed, None, seed, 30)
        sadakit.accelerate(testbed, preset)
        try:
            out = _generate(testbed, None, seed, 30)
            calls = sadakit.report(testbed).network_calls
        finally:
            sadakit.remove(testbed)
        assert calls == round(budget * 30)  # the plan computes exactly the budget
        assert held_fraction(row_psnr_db(out, reference), 40.0) >= 0.9


def test_preset_round_trips_and_refuses_another_pipeline(testbed, tmp_path):
    preset = sadakit.tune(testbed, [None], target=30.0, steps=20, seeds=(0,), generate=_generate,
                          budgets=(0.3, 0.5))
    path = preset.save(tmp_path / "p.json")
    data = json.loads(path.read_text())
    assert data["format"] == "sadakit.preset" and data["steps"] == 20 and data["target_db"] == 30.0
    assert data["pipeline"] == "GMMPipeline" and data["scheduler"] == type(testbed.scheduler).__name__
    loaded = sadakit.Preset.load(path)
    assert loaded == preset
    other = make_pipeline("gmm64-16", "flow-euler")
    with pytest.raises(sadakit.PresetMismatchError, match="scheduler"):
        sadakit.accelerate(other, loaded)
    assert not sadakit.is_accelerated(other)
    with pytest.raises(sadakit.PresetMismatchError, match="steps 20"):
        loaded.config_for(testbed, steps=50)
    data["config"]["no_such_field"] = 1
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="unknown SADAConfig field"):
        sadakit.Preset.load(path)


def test_unreachable_target_and_bad_arguments_say_so(testbed):
    with pytest.raises(sadakit.TargetNotReachedError, match="one per plan shape: 0.12: 0%/0%/0%/0%"):
        sadakit.tune(testbed, [None], target=200.0, steps=20, seeds=(0,), generate=_generate, budgets=(0.12,))
    with pytest.raises(ValueError, match="names budget_oder"):
        sadakit.tune(testbed, [None], target=30, generate=_generate, plan_shapes=({"budget_oder": 0},))
    with pytest.raises(ValueError, match="names budget"):
        sadakit.tune(testbed, [None], target=30, generate=_generate, plan_shapes=({"budget": 0.3},))
    with pytest.raises(ValueError, match="SADAConfig.budget_order must be"):
        sadakit.tune(testbed, [None], target=30, generate=_generate, plan_shapes=({"budget_order": 7},))
    with pytest.raises(ValueError, match="target must be"):
        sadakit.tune(testbed, [None], target=-1, generate=_generate)
    with pytest.raises(ValueError, match="SADAConfig.budget must be"):
        sadakit.tune(testbed, [None], target=30, generate=_generate, budgets=(0.2, 1.5))


def test_cli_tune_writes_a_preset_that_generate_takes_and_another_pipeline_refuses(tmp_path, capsys):
    from sadakit import cli

    preset = tmp_path / "preset.json"
    argv = ["tune", "--pipeline", "tiny:sd", "--steps", "8", "--target", "12", "--prompts", "a cat",
            "--images-per-prompt", "1", "--out", str(preset)]
    assert cli.main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    data = json.loads(preset.read_text())
    assert summary["budget"] == data["config"]["budget"] and data["steps"] == 8
    assert data["pipeline"] == "StableDiffusionPipeline"
    out = tmp_path / "out.png"
    assert cli.main(["generate", "--pipeline", "tiny:sd", "--prompt", "a dog", "--preset", str(preset), "--out", str(out)]) == 0
    assert "8 steps + SADA" in capsys.readouterr().out and out.exists()
    assert cli.main(["generate", "--pipeline", "tiny:sdxl", "--prompt", "a dog", "--preset", str(preset), "--out", str(out)]) == 1
    assert "tuned for pipeline 'StableDiffusionPipeline'" in capsys.readouterr().err
