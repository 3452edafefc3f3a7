"""``sadakit generate``: the call the Python API would make, with clear refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from sadakit import cli
from sadakit.adasde import CoefficientMismatchError
from sadakit.bundled import shapes
from sadakit.bundled.adasde_files import SHAPES

PROMPT = "a red circle in the top left"


def _generate(tmp_path, capsys, *extra: str) -> tuple[np.ndarray, dict]:
    out = tmp_path / "out.png"
    assert cli.main(["generate", "--prompt", PROMPT, "--out", str(out), *extra]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    return np.asarray(Image.open(out)), summary


def test_adasde_file_samples_like_the_python_api(tmp_path, capsys):
    path = SHAPES.path(5)
    image, summary = _generate(tmp_path, capsys, "--pipeline", "bundled:shapes", "--adasde-file", str(path), "--seed", "3")
    assert summary["sampler"].startswith("AdaSDE") and "5 calls" in summary["sampler"]
    pipe = shapes.load_pipeline()
    pipe.scheduler = SHAPES.scheduler(pipe, 5)
    expected = pipe(PROMPT, num_inference_steps=5, guidance_scale=SHAPES.guidance_scale,
                    generator=torch.Generator().manual_seed(3)).images[0]
    assert np.array_equal(image, np.asarray(expected))


def test_adasde_file_at_another_guidance_is_refused(tmp_path, capsys):
    out = tmp_path / "out.png"
    argv = ["generate", "--prompt", PROMPT, "--out", str(out), "--pipeline", "bundled:shapes",
            "--adasde-file", str(SHAPES.path(5)), "--guidance", "2"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "CoefficientMismatchError" in err and "guidance_scale=2" in err
    assert not out.exists()
    with pytest.raises(CoefficientMismatchError, match="guidance_scale=2"):
        cli.main(["--debug", *argv])  # --debug: the exception itself, with its traceback


def test_adasde_file_and_sada_exclude_each_other(tmp_path, capsys):
    with pytest.raises(SystemExit, match="exclude each other"):
        _generate(tmp_path, capsys, "--pipeline", "bundled:shapes", "--adasde-file", str(SHAPES.path(5)), "--accelerate")


def test_controlnet_gets_a_condition_image(tmp_path, capsys, monkeypatch):
    image, summary = _generate(tmp_path, capsys, "--pipeline", "tiny:sd-controlnet", "--steps", "8")
    assert image.shape[:2] == (64, 64) and summary["sampler"].endswith("8 steps + SADA")
    control = tmp_path / "edges.png"
    Image.fromarray(np.full((64, 64, 3), 255, dtype=np.uint8)).save(control)
    other, _ = _generate(tmp_path, capsys, "--pipeline", "tiny:sd-controlnet", "--steps", "8", "--control-image", str(control))
    assert not np.array_equal(image, other)  # the file was used
    monkeypatch.setattr("sadakit.loading.default_call_kwargs", lambda name: {})  # a ControlNet without a built-in probe
    with pytest.raises(SystemExit, match="StableDiffusionControlNetPipeline is a ControlNet pipeline; pass .*--control-image"):
        _generate(tmp_path, capsys, "--pipeline", "tiny:sd-controlnet")


def test_compile_compiles_the_denoiser_and_the_controlnet(tmp_path, capsys, monkeypatch):
    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: compiled.append(type(self).__name__))
    _generate(tmp_path, capsys, "--pipeline", "tiny:sd-controlnet", "--steps", "6", "--compile")
    assert sorted(compiled) == ["ControlNetModel", "UNet2DConditionModel"]


@pytest.mark.parametrize("argv,message", [
    (["--steps", "0"], "--steps: must be at least 1, got 0"),
    (["--steps", "-3"], "--steps: must be at least 1, got -3"),
    (["--steps", "five"], "--steps: expected a positive integer"),
    (["--height", "60"], "--height: must be a multiple of 8"),
    (["--seed", "-1"], "--seed: must be at least 0"),
    (["--adasde-file", "no-such.safetensors"], "--adasde-file: no such file: no-such.safetensors"),
    (["--control-image", "."], "--control-image: not a regular file"),
])
def test_generate_arguments_are_checked_before_loading(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.setattr("sadakit.loading.load_pipeline", lambda *a, **k: pytest.fail("loaded a model"))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["generate", "--pipeline", "bundled:shapes", "--prompt", PROMPT, "--out", str(tmp_path / "o.png"), *argv])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("out,message", [
    ("image", "has no output extension"),
    ("sub.png", "is a directory"),
    ("notes.txt/out.png", "notes.txt is not a writable directory"),
])
def test_generate_output_path_is_checked_before_loading(tmp_path, capsys, monkeypatch, out, message):
    (tmp_path / "sub.png").mkdir()
    (tmp_path / "notes.txt").write_text("a file, not a directory")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sadakit.loading.load_pipeline", lambda *a, **k: pytest.fail("loaded a model"))
    with pytest.raises(SystemExit):
        cli.main(["generate", "--pipeline", "bundled:shapes", "--prompt", PROMPT, "--out", out])
    assert message in capsys.readouterr().err


def test_generate_refuses_an_image_pipeline_writing_wav(tmp_path):
    with pytest.raises(SystemExit, match=r"makes images; --out must end in \.png"):
        cli.main(["generate", "--pipeline", "tiny:sd", "--prompt", PROMPT, "--steps", "2", "--out", str(tmp_path / "a.wav")])


def test_generate_refuses_to_write_a_non_finite_image(tmp_path, monkeypatch):
    import diffusers

    original = diffusers.UNet2DConditionModel.forward

    def nan_forward(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        return (out[0] * float("nan"),) if isinstance(out, tuple) else type(out)(sample=out.sample * float("nan"))

    monkeypatch.setattr(diffusers.UNet2DConditionModel, "forward", nan_forward)
    out = tmp_path / "nan.png"
    with pytest.raises(SystemExit, match="non-finite values"):
        cli.main(["generate", "--pipeline", "tiny:sd", "--prompt", PROMPT, "--steps", "3", "--no-accelerate",
                  "--out", str(out)])
    assert not out.exists()


def test_bench_arguments_are_checked(capsys):
    with pytest.raises(SystemExit):
        cli.main(["bench", "--pipeline", "tiny:sd", "--steps", "0"])
    assert "--steps: must be at least 1, got 0" in capsys.readouterr().err


def test_generate_refuses_an_adasde_file_of_another_model(tmp_path, capsys):
    # the learned-grid Euler file: its grid (top 14.6) fits tiny:sd-v's range, so --allow-other-model can run it
    # (the default NFE-5 file, multistep, starts at 28, above that range, and is refused for that reason too)
    out = tmp_path / "other.png"
    other = SHAPES.path(5, "euler", True, learned_grid=True)
    argv = ["generate", "--pipeline", "tiny:sd-v", "--prompt", PROMPT, "--adasde-file", str(other),
            "--out", str(out)]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "OtherModelError" in err and "--allow-other-model" in err and not out.exists()
    assert cli.main([*argv, "--allow-other-model"]) == 0 and out.exists()


@pytest.mark.parametrize("suffix", [".mp4", ".gif"])
def test_generate_writes_a_playable_video(tmp_path, capsys, suffix):
    import imageio.v3 as iio

    out = tmp_path / f"clip{suffix}"
    assert cli.main(["generate", "--pipeline", "tiny:wan", "--prompt", "a red ball rolling", "--steps", "12",
                     "--num-frames", "9", "--fps", "6", "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["output"] == str(out) and summary["frames"] == 9
    frames = iio.imread(out, index=None)  # decoded back: every frame, at the generated size
    assert frames.shape[0] == 9 and frames.shape[1:3] == (32, 48)
    assert frames.std() > 0  # not a blank clip


def test_video_arguments_fit_the_pipeline(tmp_path):
    with pytest.raises(SystemExit, match="makes videos; --out must end in .mp4, .gif"):
        cli.main(["generate", "--pipeline", "tiny:wan", "--prompt", "x", "--steps", "2", "--out", str(tmp_path / "a.png")])
    with pytest.raises(SystemExit, match="--num-frames is for video pipelines"):
        cli.main(["generate", "--pipeline", "tiny:sd", "--prompt", "x", "--steps", "2", "--num-frames", "9",
                  "--out", str(tmp_path / "a.png")])


@pytest.mark.parametrize("argv,message", [
    (["--prompt", PROMPT, "--batch-size", "2", "--out", "o.png"], "--batch-size: groups the rows of --prompts"),
    (["--prompts", "bad.jsonl", "--out", "outdir"], "--prompts: bad.jsonl:2: not valid JSON"),
    (["--prompts", "good.txt", "--out", "a-file.txt"], "--out: 'a-file.txt' exists and is not a directory"),
    (["--prompts", "good.txt", "--prompt", PROMPT, "--out", "outdir"], "not allowed with argument"),
])
def test_prompt_set_arguments_are_checked_before_loading(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a"}\n{"prompt": \n')
    (tmp_path / "good.txt").write_text("a red square\n")
    (tmp_path / "a-file.txt").write_text("x")
    monkeypatch.setattr("sadakit.loading.load_pipeline", lambda *a, **k: pytest.fail("loaded a model"))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["generate", "--pipeline", "bundled:shapes", *argv])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_generate_prompts_writes_a_directory_and_reruns_nothing(tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "a red square", "seed": 3}\n{"prompt": "a blue circle"}\n')
    argv = ["generate", "--pipeline", "tiny:sd", "--prompts", str(prompts), "--steps", "4", "--out", str(tmp_path / "o")]
    assert cli.main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (summary["rows"], summary["generated"], summary["failed"]) == (2, 2, 0)
    assert sorted(p.name for p in (tmp_path / "o").glob("*.png")) == ["000000.png", "000001.png"]
    assert cli.main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (summary["done_before"], summary["generated"]) == (2, 0)
