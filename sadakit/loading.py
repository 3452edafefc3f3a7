"""Load a pipeline by name: a hub id or local directory (real weights), or a bundled offline one.

``tiny:<family>[:medium]`` builds the random-weight test pipelines of ``sadakit.testing``
(``tiny:sdxl``, ``tiny:sd``, ``tiny:sd-v``, ``tiny:flux``, ``tiny:musicldm``, ...).
``bundled:shapes``, ``bundled:shapes-dit``, ``bundled:moving-shapes`` and ``bundled:notes`` load the
trained models shipped in ``sadakit.bundled`` (through the real ``from_pretrained``), the offline
pipelines whose outputs mean something.
Anything else goes to ``DiffusionPipeline.from_pretrained`` unchanged, so users with weights
(and network or a local copy) get the real loading path.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from .bundled import NAMES as BUNDLED  # the one list of bundled names

TINY_BUILDERS = {
    "sd": ("tiny_sd_pipeline", {}),
    "sd-v": ("tiny_sd_pipeline", {"prediction_type": "v_prediction"}),
    "sdxl": ("tiny_sdxl_pipeline", {}),
    "flux": ("tiny_flux_pipeline", {}),
    "sd-controlnet": ("tiny_sd_controlnet_pipeline", {}),
    "sdxl-controlnet": ("tiny_sdxl_controlnet_pipeline", {}),
    "flux-controlnet": ("tiny_flux_controlnet_pipeline", {}),
    "musicldm": ("tiny_musicldm_pipeline", {}),
    "wan": ("tiny_wan_pipeline", {}),
    "sd3": ("tiny_sd3_pipeline", {}),
    "chroma": ("tiny_chroma_pipeline", {}),
    "cogvideox": ("tiny_cogvideox_pipeline", {}),
    "ltx": ("tiny_ltx_pipeline", {}),
    "hunyuan_video": ("tiny_hunyuan_video_pipeline", {}),
}


def _bundled_model(which: str) -> Any:
    """The model module of ``bundled:<which>`` (architecture, loader, generation; not its judge)."""
    import importlib

    return importlib.import_module(f".bundled.{which.replace('-', '_')}.model", __package__)


def load_pipeline(name: str, dtype: str = "float32", device: str | None = None) -> Any:
    """A ready pipeline for ``name`` (see module docstring); raises with the allowed names."""
    if name.startswith("bundled:"):
        which = name.split(":", 1)[1]
        if which not in BUNDLED:
            raise ValueError(f"unknown bundled pipeline {name!r}; allowed: " + ", ".join(f"bundled:{b}" for b in BUNDLED))
        pipe = _bundled_model(which).load_pipeline(torch_dtype=getattr(torch, dtype))
    elif name.startswith("tiny:"):
        parts = name.split(":")
        family = parts[1] if len(parts) > 1 else ""
        size = parts[2] if len(parts) > 2 else "tiny"
        if family not in TINY_BUILDERS or size not in ("tiny", "medium"):
            raise ValueError(
                f"unknown offline pipeline {name!r}; allowed: "
                + ", ".join(f"tiny:{f}[:medium]" for f in TINY_BUILDERS)
            )
        from . import testing

        builder_name, options = TINY_BUILDERS[family]
        pipe = getattr(testing, builder_name)(size=size, **options)
    else:
        from diffusers import DiffusionPipeline

        if not os.path.isdir(name) and os.environ.get("HF_HUB_OFFLINE") == "1":
            raise FileNotFoundError(f"{name!r} is not a local directory and HF_HUB_OFFLINE=1 forbids downloading it")
        pipe = DiffusionPipeline.from_pretrained(name, torch_dtype=getattr(torch, dtype))
    if device:
        pipe.to(device)
    return pipe


def default_call_kwargs(name: str) -> dict:
    """Call arguments that keep the offline pipelines small (sizes, short text sequences)."""
    if name.startswith("bundled:") and name.split(":", 1)[1] in BUNDLED:
        return dict(_bundled_model(name.split(":", 1)[1]).CALL_KWARGS)
    if not name.startswith("tiny:"):
        return {}
    family = name.split(":")[1]
    medium = name.endswith(":medium")
    if family == "musicldm":
        return {"audio_length_in_s": 5.12 if medium else 0.64}
    if family == "wan":  # 9 frames (the VAE compresses time 4x: 4k + 1), a non-square size
        return {"height": 64 if medium else 32, "width": 96 if medium else 48, "num_frames": 9}
    if family == "cogvideox":  # 9 frames of 48 x 64: a 3 x 3 x 4 token grid
        return {"height": 48, "width": 64, "num_frames": 9}
    if family == "hunyuan_video":  # 9 frames of 48 x 64: a 3 x 3 x 4 token grid; guidance-distilled, one call per step
        from .testing.video_pipelines_2 import HUNYUAN_PROMPT_TEMPLATE

        return {"height": 48, "width": 64, "num_frames": 9, "max_sequence_length": 16,
                "prompt_template": HUNYUAN_PROMPT_TEMPLATE}
    if family == "ltx":  # the VAE compresses 32x in space, 8x in time: 17 frames of 96 x 128
        return {"height": 96, "width": 128, "num_frames": 17}
    side = 256 if medium else 64
    kwargs: dict = {"height": side, "width": side}
    if family.startswith("flux") or family in ("sd3", "chroma"):
        kwargs["max_sequence_length"] = 32
    if family.endswith("controlnet"):  # a fixed control map (square, stripe, ramp) of the output size
        from .testing.pipelines import control_probe

        kwargs["control_image" if family.startswith("flux") else "image"] = control_probe(3, side, side)
    return kwargs


def control_image_kwargs(pipe: Any, path: str) -> dict:
    """``--control-image``: the file as the ControlNet condition, under the argument name the
    pipeline expects (``control_image`` for Flux, ``image`` for SD/SDXL)."""
    import inspect

    from PIL import Image

    params = inspect.signature(type(pipe).__call__).parameters
    name = "control_image" if "control_image" in params else "image" if "controlnet" in getattr(pipe, "components", {}) else None
    if name is None:
        raise ValueError(f"--control-image given, but {type(pipe).__name__} is not a ControlNet pipeline")
    return {name: Image.open(path).convert("RGB")}


#: prompts for a pipeline without an evaluation set of its own (bench and tune calibration)
GENERIC_PROMPTS = ("a red square on the left", "a blue circle at the top")


def default_prompts(name: str, n: int | None = 4) -> list[str] | None:
    """Prompts a pipeline was trained on (the first ``n``, or all with ``None``, of a bundled
    model's evaluation set), else None."""
    if name.startswith("bundled:") and name.split(":", 1)[1] in BUNDLED:
        return _bundled_model(name.split(":", 1)[1]).eval_prompts(n)
    return None


def default_model_name(name: str) -> str:
    """The model name coefficient files are stored under: a bundled pipeline's model id (the one
    its shipped AdaSDE files carry, so a file distilled from the command line loads with them),
    else ``name`` itself."""
    if name.startswith("bundled:"):
        from .bundled.adasde_files import BUNDLED_MODEL_IDS

        return BUNDLED_MODEL_IDS.get(name.split(":", 1)[1], name)
    return name
