"""The plugin contract: the questions a modality plugin answers about its pipelines.

A plugin is any object (or module) with functions named like the specifications below and
decorated with ``sadakit.hookimpl``. Built-in plugins use exactly this contract; third-party
plugins register through the ``sadakit`` entry-point group or ``sadakit.register_plugin``.

Only ``sadakit_family`` is asked of every plugin. The registry gives the pipeline to the first
plugin that claims it (third-party plugins are asked before the built-in ones) and asks the
other questions of that plugin alone, so an implementation never needs to re-check the type.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import torch

    from .config import SADAConfig
    from .core.parameterization import Parameterization
    from .plugins.spec import ControlSpec, DenoiserSpec, TokenBlockSpec

PROJECT = "sadakit"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def sadakit_family(pipe: Any) -> str | None:
    """Return a short family name (e.g. ``"sdxl"``) if this plugin handles ``pipe``, else None.

    Called once per ``accelerate``; must be cheap and must not modify the pipeline.
    """


@hookspec(firstresult=True)
def sadakit_supported_pipelines() -> list[str]:
    """Names of the pipeline classes this plugin handles, for error messages and the README."""


@hookspec(firstresult=True)
def sadakit_denoiser(pipe: Any) -> "DenoiserSpec":
    """The denoiser module and how to read its call: latent argument, timestep argument and the
    latent layout (how per-element scores become a per-token grid)."""


@hookspec(firstresult=True)
def sadakit_parameterization(pipe: Any) -> "Parameterization":
    """How the denoiser's (input, timestep, output) map to the common form, for the pipeline's
    *current* scheduler. Called at the start of every generation (users swap schedulers).
    Raise ``sadakit.UnsupportedPipelineError`` for scheduler settings that cannot be served."""


@hookspec(firstresult=True)
def sadakit_cfg_groups(pipe: Any, batch_size: int) -> list[list[int]] | None:
    """Rows of one denoiser batch that must decide together (classifier-free guidance halves of
    one prompt), as lists of row indices covering the batch; None if every row is independent.
    Called at the start of every generation with the denoiser's batch size."""


@hookspec(firstresult=True)
def sadakit_token_blocks(pipe: Any, denoiser: "torch.nn.Module") -> list["TokenBlockSpec"]:
    """The blocks eligible for token-wise sparsity, with their token layout. Empty list: none."""


@hookspec(firstresult=True)
def sadakit_control_modules(pipe: Any) -> list["ControlSpec"]:
    """Control branches (ControlNets) called with the step's latent and timestep just before the
    denoiser; a skipped call skips them too, a call computed on some rows runs them on those
    rows. Empty list when the pipeline has none."""


@hookspec(firstresult=True)
def sadakit_default_config(pipe: Any) -> "SADAConfig":
    """The family's tuned defaults."""


@hookspec(firstresult=True)
def sadakit_validate(pipe: Any, config: "SADAConfig") -> None:
    """Raise a clear error (``sadakit.UnsupportedPipelineError`` / ``ValueError``) if this pipeline
    or config cannot be served. Called before anything is applied, so the pipeline stays
    untouched on error. Return None when fine."""


@hookspec
def sadakit_prepare(pipe: Any) -> None:
    """Fix-ups applied to the pipeline instance when accelerated (e.g. library compatibility
    shims); must be undone exactly by ``sadakit_restore``."""


@hookspec
def sadakit_restore(pipe: Any) -> None:
    """Undo ``sadakit_prepare``."""
