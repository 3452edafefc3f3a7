"""Small value objects with which plugins describe their pipelines to the core runtime."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

#: Turns the per-element stability map of the latent into a (B, H, W) per-token grid. It also
#: receives the denoiser call's bound arguments (e.g. Flux's ``img_ids`` give the packed grid).
LatentToGrid = Callable[[torch.Tensor, dict[str, Any]], torch.Tensor]


def channels_first_grid(m: torch.Tensor, arguments: dict[str, Any]) -> torch.Tensor:
    """(B, C, H, W) latents (UNets, spectrograms): mean over channels."""
    return m.mean(dim=1)


@dataclass(frozen=True)
class DenoiserSpec:
    """The denoiser module and where its call keeps the latent and the timestep."""

    module: torch.nn.Module
    sample_arg: str = "sample"
    timestep_arg: str = "timestep"
    latent_to_grid: LatentToGrid = channels_first_grid
    #: Name of the output field when the module returns a diffusers ``BaseOutput``.
    output_field: str = "sample"
    #: Keyword arguments that are never per-row even when their first dimension happens to
    #: equal the batch (Flux's ``img_ids`` / ``txt_ids`` are (tokens, 3)): running some rows
    #: of a call, or replaying it for another batch, must leave them whole.
    unbatched_args: frozenset[str] = frozenset()


@dataclass(frozen=True)
class TokenBlockSpec:
    """A block whose first argument is (B, N, C) image tokens on a grid of the latent.

    ``kind="grid"``: the N tokens are the latent grid downsampled by a power of two
    (UNet transformer blocks), row-major.
    """

    module: torch.nn.Module
    name: str
    kind: str = "grid"
    hidden_arg: str = "hidden_states"
    #: A ``sadakit.runtime.hooks.TokenBlockHook`` subclass for blocks with another calling
    #: convention (e.g. Flux blocks carrying text tokens and rotary embeddings); None: default.
    hook_class: type | None = None
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ControlSpec:
    """A control branch called with the step's latent before the denoiser.

    ``to_denoiser_sample(sample, pipe, arguments)`` maps the control call's sample to the
    denoiser's batch layout, given the control call's bound arguments (identity by default;
    ControlNet guess mode feeds only the conditional half and passes ``guess_mode=True``).
    """

    module: torch.nn.Module
    sample_arg: str = "sample"
    timestep_arg: str = "timestep"
    to_denoiser_sample: Callable[[torch.Tensor, Any, dict], torch.Tensor] | None = None
    #: denoiser rows whose results the control call's rows feed, given the denoiser batch size
    control_rows: Callable[[int, int], list[int]] | None = None
    #: as :attr:`DenoiserSpec.unbatched_args`
    unbatched_args: frozenset[str] = frozenset()
