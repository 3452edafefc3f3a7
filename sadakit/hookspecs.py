"""The plugin contract: the questions a modality plugin answers about its pipelines.

A plugin is any object (or module) with functions named like the specifications below and
decorated with ``sadakit.hookimpl``. Built-in plugins use exactly this contract; third-party
plugins register through the ``sadakit`` entry-point group or ``sadakit.register_plugin``.

Only ``sadakit_family`` is asked of every plugin. The registry gives the pipeline to the first
plugin that claims it (third-party plugins are asked before the built-in ones) and asks the
other questions of that plugin alone, so an implementation never needs to re-check the type.
Every hook but ``sadakit_family`` and ``sadakit_denoiser`` is optional.

When they are asked, and how often:

``sadakit.accelerate(pipe, config)``, in this order, once each:
  1. ``sadakit_family`` (of every plugin, newest first, until one claims the pipeline)
  2. ``sadakit_default_config`` (only when no config is given)
  3. ``sadakit_validate``
  4. ``sadakit_parameterization`` (to refuse an unusable scheduler before anything changes)
  5. ``sadakit_denoiser`` (its argument names are checked against the module's ``forward``)
  6. ``sadakit_token_blocks`` (only with ``config.token_sparsity``; names checked likewise;
     once for the denoiser and once for each of its ``experts``)
  7. ``sadakit_control_modules``
  8. ``sadakit_prepare``; then the hooks are installed. Nothing before this step changes the
     pipeline, so an error in 1-7 leaves it untouched.
At the start of every generation (the first denoiser call, once the call streams are known):
  ``sadakit_parameterization``, then ``sadakit_cfg_groups`` with the batch of one call.
``sadakit.remove(pipe)``: ``sadakit_restore``, once.
``sadakit.supported_pipelines()`` / ``sadakit info``: ``sadakit_supported_pipelines`` of every plugin.
``sadakit generate``, ``sadakit.generate_many``: ``sadakit_output_kind``, once, before generating;
  ``sadakit_output_formats`` of every plugin when the command line checks an output name.

The value types (``DenoiserSpec``, ``TokenBlockSpec``, ``TokenArg``, ``ControlSpec``) live in
:mod:`sadakit.spec`; they and the parameterisations (``VPParameterization``,
``FlowParameterization``, ``EDMParameterization``) are exported from ``sadakit``. A tutorial:
``docs/plugins.md``.

Token layout rule: ``DenoiserSpec.latent_to_grid`` maps a per-element map shaped like the
denoiser's sample to a per-token grid ``(B, *grid)`` with any number of axes. Each
``TokenBlockSpec`` block must receive ``(B, N, C)`` hidden states whose N tokens are that grid
(``layout="exact"``) or the grid with every axis halved k times, ceil (``layout="halved"``), in
row-major order (last axis fastest), possibly next to tokens off the grid (text tokens of a
single-stream block, a global token) that ``TokenBlockSpec.other_tokens`` declares and that are
always computed. A block that fits neither runs in full and the report names it.

Call streams: a pipeline that calls the denoiser more than once per step (one call per CFG
branch) is served when it names each call with diffusers' ``cache_context`` (most pipelines
since 2025 do) or when ``DenoiserSpec.call_stream`` names it. The first step learns the streams;
each keeps its own history; the rows of a prompt decide together across streams.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import torch

    from .config import SADAConfig
    from .core.parameterization import Parameterization
    from .outputs import OutputFormat
    from .spec import ControlSpec, DenoiserSpec, TokenBlockSpec

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
    latent layout (how per-element scores become a per-token grid); further expert modules that
    take its place at some steps, and the noisy channels of a sample carrying condition channels."""


@hookspec(firstresult=True)
def sadakit_parameterization(pipe: Any) -> "Parameterization":
    """How the denoiser's (input, timestep, output) map to the common form, for the pipeline's
    *current* scheduler. Called at the start of every generation (users swap schedulers).
    Raise ``sadakit.UnsupportedPipelineError`` for scheduler settings that cannot be served."""


@hookspec(firstresult=True)
def sadakit_cfg_groups(pipe: Any, batch_size: int) -> list[list[int]] | None:
    """Rows of one denoiser call that must decide together (classifier-free guidance halves of
    one prompt batched into one call), as equal-sized lists of row indices covering the batch;
    None if every row is independent. Called at the start of every generation with one call's
    batch size. CFG branches called separately are call streams and need no answer here."""


@hookspec(firstresult=True)
def sadakit_token_blocks(pipe: Any, denoiser: "torch.nn.Module") -> list["TokenBlockSpec"]:
    """The blocks eligible for token-wise sparsity: their layout on the latent's token grid,
    which argument holds the hidden states, which others are indexed by token
    (``TokenBlockSpec.token_args``) and where the tokens are in a tuple output. Empty: none."""


@hookspec(firstresult=True)
def sadakit_control_modules(pipe: Any) -> list["ControlSpec"]:
    """Control branches (ControlNets) called with the step's latent and timestep just before the
    denoiser; a skipped call skips them too, a call computed on some rows runs them on those
    rows. Empty list when the pipeline has none."""


@hookspec(firstresult=True)
def sadakit_output_kind(pipe: Any) -> str:
    """What the pipeline makes: ``"image"``, ``"video"``, ``"audio"`` (``sadakit generate``
    writes PNG, MP4/GIF or WAV accordingly) or the kind of an :class:`sadakit.OutputFormat`
    some plugin adds with ``sadakit_output_formats``. Default: audio when the pipeline has a
    vocoder, else image. Asked by the command line, the prompt-set runner and the bench."""


@hookspec
def sadakit_output_formats() -> list["OutputFormat"]:
    """Kinds of output this plugin adds beyond image, video and audio, each with its file
    extensions and writer (:class:`sadakit.OutputFormat`), so that ``sadakit generate`` and
    ``sadakit.generate_many`` save a new modality's samples. Asked of every plugin; a kind
    named twice is refused with both plugins named."""


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
