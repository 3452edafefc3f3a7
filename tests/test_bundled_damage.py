"""Every bundled model's loader names the damaged file: a missing, empty, truncated or garbled
file, or weights that lack a tensor the config asks for (diffusers would initialise it at random
with only a warning). One table for the four models instead of a copy of these tests in each
model's test file."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from sadakit.bundled import BundledModelError, moving_shapes, notes, shapes, shapes_dit

#: name -> (the model's namespace, the file holding its denoiser's weights)
MODELS: dict[str, tuple[object, str]] = {
    "shapes-sd": (shapes, "unet/diffusion_pytorch_model.safetensors"),
    "notes-musicldm": (notes, "unet/diffusion_pytorch_model.safetensors"),
    "shapes-dit": (shapes_dit, "transformer/diffusion_pytorch_model.safetensors"),
    "moving-shapes": (moving_shapes, "transformer/diffusion_pytorch_model.safetensors"),
}


def _any_file(name: str) -> str:
    """One of the model's pipeline files, a fresh pick each run (every file is checked the same way;
    all of them in every run would cost ~2 s each)."""
    files = MODELS[name][0].PIPELINE_FILES
    return files[int(torch.randint(len(files), (1,)))]


def _copy(tmp_path: Path, name: str) -> tuple[Path, Callable[[Path], object]]:
    module = MODELS[name][0]
    target = tmp_path / name
    shutil.copytree(module.MODEL_DIR, target)
    return target, module.load_pipeline


def _fraction() -> float:
    return float(torch.empty(1).uniform_(0.05, 0.95))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_missing_file_is_named(tmp_path: Path, name: str) -> None:
    broken, load = _copy(tmp_path, name)
    file = _any_file(name)
    (broken / file).unlink()
    with pytest.raises(BundledModelError, match=file):
        load(broken)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_truncated_or_garbled_file_is_named(tmp_path: Path, name: str) -> None:
    broken, load = _copy(tmp_path, name)
    file = _any_file(name)
    path = broken / file
    data = path.read_bytes()
    if file.endswith(".safetensors"):
        path.write_bytes(data[: int(len(data) * _fraction())])
    else:
        path.write_text("{not json")
    with pytest.raises(BundledModelError, match=file):
        load(broken)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_empty_file_is_named(tmp_path: Path, name: str) -> None:
    broken, load = _copy(tmp_path, name)
    file = MODELS[name][1]
    (broken / file).write_bytes(b"")
    with pytest.raises(BundledModelError, match=file):
        load(broken)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_weight_missing_from_its_file_is_named(tmp_path: Path, name: str) -> None:
    from safetensors.torch import load_file, save_file

    broken, load = _copy(tmp_path, name)
    file = MODELS[name][1]
    tensors = load_file(broken / file)
    weights = sorted(k for k in tensors if k.endswith(".weight"))
    del tensors[weights[int(torch.randint(len(weights), (1,)))]]
    save_file(tensors, broken / file)
    with pytest.raises(BundledModelError, match=f"{file} lacks 1 weight"):
        load(broken)


@pytest.mark.parametrize("name", ["shapes-dit", "moving-shapes"])
def test_a_config_asking_for_more_blocks_is_refused(tmp_path: Path, name: str) -> None:
    broken, load = _copy(tmp_path, name)
    config_file = broken / "transformer" / "config.json"
    config = json.loads(config_file.read_text())
    config["num_layers"] += int(torch.randint(1, 3, (1,)))
    config_file.write_text(json.dumps(config))
    with pytest.raises(BundledModelError, match="transformer/diffusion_pytorch_model.safetensors lacks"):
        load(broken)
