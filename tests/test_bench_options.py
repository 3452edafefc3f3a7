"""Every ``sadakit bench`` option on one image, one audio and one video pipeline (tiny random
weights, 2 steps): each works for the modality or is refused in one line, before any generation."""

from __future__ import annotations

import json

import pytest

from sadakit import cli

#: (pipeline, what its batch-per-prompt argument is called, does it take --height/--width)
PIPELINES = [("tiny:sd", "num_images_per_prompt", True), ("tiny:musicldm", "num_waveforms_per_prompt", False),
             ("tiny:wan", "num_videos_per_prompt", True)]


def _bench(tmp_path, *options: str) -> dict:
    out = tmp_path / "out"
    status = cli.main(["bench", *options, "--out", str(out)])
    assert status == 0
    return json.loads((out / "bench.json").read_text())


@pytest.mark.parametrize("pipeline,per_prompt,sized", PIPELINES)
def test_every_option_on_each_modality(tmp_path, pipeline, per_prompt, sized):
    from sadakit.bundled.adasde_files import SHAPES

    adasde = str(SHAPES.directory / SHAPES.available()[0])  # fits the shapes model only: a reason, not a crash
    size = ["--height", "32", "--width", "48"] if sized else []
    data = _bench(tmp_path, "--pipeline", pipeline, "--prompts", "a red ball", "--seeds", "3", "--steps", "2",
                  "--repeats", "1", "--images-per-prompt", "2", "--methods", "fewer-steps", "sada:3", "adasde",
                  "--sweep", "--threads", "1", "--adasde-file", adasde, "--dtype", "float32", "--device", "cpu", *size)
    rows = {r["method"]: r for r in data["summary"]}
    # --sweep gives the bare "fewer-steps" its knob sweep; the explicit "sada:3" keeps its knob
    assert set(rows) == {"baseline", "fewer-steps:0.75", "fewer-steps:0.5", "fewer-steps:0.3", "sada:3"}, data["not_applicable"]
    assert "does not fit" in data["not_applicable"]["adasde"]
    assert rows["fewer-steps:0.5"]["denoiser_forwards"] < rows["baseline"]["denoiser_forwards"]
    assert rows["fewer-steps:0.75"]["flops_ratio"] == pytest.approx(1.0, rel=1e-6)  # round(2 x 0.75) = 2 steps
    assert all(c["seed"] == 3 for c in data["cases"])
    fidelity = {"tiny:sd": "psnr_db", "tiny:musicldm": "log_mel_psnr", "tiny:wan": "temporal_psnr_db"}[pipeline]
    assert rows["baseline"][fidelity] == float("inf") and rows["fewer-steps:0.75"][fidelity] == float("inf")
    assert rows["fewer-steps:0.5"][fidelity] < 200
    assert (tmp_path / "out" / "bench.md").read_text().startswith(pipeline)


def test_the_batch_per_prompt_has_each_modalitys_name():
    from sadakit.bench.runner import per_prompt_kwargs
    from sadakit.loading import load_pipeline

    for pipeline, name, _ in PIPELINES:
        pipe = load_pipeline(pipeline)
        assert per_prompt_kwargs(pipe, 3) == {name: 3} and per_prompt_kwargs(pipe, 1) == {}


def test_options_a_modality_cannot_take_are_refused_before_generating(tmp_path, capsys):
    probe = tmp_path / "edges.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(probe)
    base = ["bench", "--steps", "1", "--repeats", "1", "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit, match="--height is for image and video pipelines; tiny:musicldm"):
        cli.main(base + ["--pipeline", "tiny:musicldm", "--height", "64"])
    with pytest.raises(SystemExit, match="tiny:wan: --control-image given, but WanPipeline is not a ControlNet"):
        cli.main(base + ["--pipeline", "tiny:wan", "--control-image", str(probe)])
    assert not (tmp_path / "o").exists()


def test_several_waveforms_per_prompt_on_the_bundled_notes_model(tmp_path):
    """The command a new user tries first (it failed with MusicLDM's own name for the batch)."""
    data = _bench(tmp_path, "--pipeline", "bundled:notes", "--images-per-prompt", "4", "--prompts", "a soft note C4",
                  "--steps", "2", "--repeats", "1", "--methods", "fewer-steps:0.5")
    rows = {r["method"]: r for r in data["summary"]}
    assert set(rows) == {"baseline", "fewer-steps:0.5"}
    for row in rows.values():  # the notes model's judge scores all four clips of the prompt
        assert 0.0 <= row["pitch_adherence"] <= 1.0 and 0.0 <= row["timbre_adherence"] <= 1.0
    assert rows["fewer-steps:0.5"]["denoiser_forwards"] == 1
