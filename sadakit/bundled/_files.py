"""Integrity checks for the bundled model directories.

Why: ``from_pretrained`` on a truncated safetensors file or a missing config fails deep in
diffusers/transformers with messages that do not say which file is at fault. The bundled
models are shipped inside the package, so a broken checkout or partial copy is the likely
failure, and the error should name the file to restore.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from sadakit.errors import SadakitError

MODELS_DIR = Path(__file__).resolve().parent / "models"


class BundledModelError(SadakitError, FileNotFoundError):
    """A bundled model file is missing or corrupted; the message names the file."""


def _check_safetensors(path: Path) -> None:
    try:
        with safe_open(str(path), framework="pt") as handle:
            keys = list(handle.keys())
            for key in keys:  # reading every tensor catches truncated payloads too
                handle.get_slice(key)
    except (SafetensorError, OSError, ValueError) as exc:
        raise BundledModelError(f"bundled model file is corrupted: {path} ({exc})") from exc
    if not keys:
        raise BundledModelError(f"bundled model file holds no tensors: {path}")
    expected = path.stat().st_size
    with path.open("rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_len))
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + header_len + end != expected:
        raise BundledModelError(
            f"bundled model file is corrupted: {path} (size {expected} bytes, header describes {8 + header_len + end})"
        )


def check_model_dir(model_dir: Path, files: tuple[str, ...]) -> None:
    """Raise :class:`BundledModelError` naming the first missing, empty or unreadable file."""
    if not model_dir.is_dir():
        raise BundledModelError(f"bundled model directory is missing: {model_dir}")
    for name in files:
        path = model_dir / name
        if not path.is_file():
            raise BundledModelError(f"bundled model file is missing: {path}")
        if path.stat().st_size == 0:
            raise BundledModelError(f"bundled model file is empty: {path}")
        if path.suffix == ".json":
            try:
                json.loads(path.read_text())
            except (ValueError, UnicodeDecodeError) as exc:
                raise BundledModelError(f"bundled model file is corrupted (not valid JSON): {path} ({exc})") from exc
        elif path.suffix == ".safetensors":
            _check_safetensors(path)


def load_safetensors_checked(path: Path) -> dict[str, torch.Tensor]:
    """``safetensors.torch.load_file`` with a file-naming error for missing/corrupted files."""
    if not path.is_file():
        raise BundledModelError(f"bundled model file is missing: {path}")
    _check_safetensors(path)
    return load_file(str(path))


def check_loaded_weights(components: dict[str, object], model_dir: Path) -> None:
    """Raise :class:`BundledModelError` if ``from_pretrained`` initialised any weight of a loaded
    component at random because its safetensors file lacks it (a config that no longer matches
    the weights). Why: diffusers and transformers only log a warning then, and the pipeline would
    generate noise. Weights tied to a stored one (same storage) count as stored."""
    from torch import nn

    for name, module in components.items():
        if not isinstance(module, nn.Module):
            continue
        files = sorted((model_dir / name).glob("*.safetensors"))
        if not files:
            continue
        stored: set[str] = set()
        for path in files:
            with safe_open(str(path), framework="pt") as handle:
                stored.update(handle.keys())
        state = module.state_dict()
        stored_storage = {state[k].untyped_storage().data_ptr() for k in stored if k in state}
        missing = [k for k, v in state.items() if k not in stored and v.untyped_storage().data_ptr() not in stored_storage]
        if missing:
            raise BundledModelError(
                f"bundled model file does not match its config: {files[0]} lacks {len(missing)} weight(s) that "
                f"{model_dir / name / 'config.json'} asks for (e.g. {missing[0]!r}); restore the directory"
            )


def loaded_for_inference(pipe, model_dir: Path):
    """A bundled pipeline just loaded by ``from_pretrained``, ready to sample: no weight left
    initialised at random (:func:`check_loaded_weights`), every module in eval mode, the
    progress bar off. One place for what every bundled loader does after loading."""
    from torch import nn

    check_loaded_weights(pipe.components, model_dir)
    for component in pipe.components.values():
        if isinstance(component, nn.Module):
            component.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe



def load_bundled(pipeline_cls, model_dir: Path, files: tuple[str, ...], name: str, **kwargs):
    """``pipeline_cls.from_pretrained`` on a bundled model directory: every file checked first,
    a loading failure re-raised with the model and directory named, then
    :func:`loaded_for_inference`. The one path of the bundled loaders (notes adds its own
    warning filter around ``from_pretrained`` and keeps its own)."""
    check_model_dir(model_dir, files)
    try:
        pipe = pipeline_cls.from_pretrained(model_dir, local_files_only=True, **kwargs)
    except Exception as exc:  # noqa: BLE001 - re-raised with the directory named
        raise ValueError(f"could not load the bundled {name} model from {model_dir}: {exc}") from exc
    return loaded_for_inference(pipe, model_dir)
