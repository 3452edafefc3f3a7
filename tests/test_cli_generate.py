"""``sadakit generate``: the call the Python API would make, with clear refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from sadakit import cli
from sadakit.adasde import CoefficientMismatchError
from sadakit.bundled import load_shapes_pipeline
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
    pipe = load_shapes_pipeline()
    pipe.scheduler = SHAPES.scheduler(pipe, 5)
    expected = pipe(PROMPT, num_inference_steps=5, guidance_scale=SHAPES.guidance_scale,
                    generator=torch.Generator().manual_seed(3)).images[0]
    assert np.array_equal(image, np.asarray(expected))


def test_adasde_file_at_another_guidance_is_refused(tmp_path, capsys):
    with pytest.raises(CoefficientMismatchError, match="guidance_scale=2"):
        _generate(tmp_path, capsys, "--pipeline", "bundled:shapes", "--adasde-file", str(SHAPES.path(5)), "--guidance", "2")


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
