"""Small value objects with which plugins describe their pipelines to the core runtime."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

#: Turns the per-element stability map of the latent into a (B, H, W) per-token grid.
LatentToGrid = Callable[[torch.Tensor], torch.Tensor]


def channels_first_grid(m: torch.Tensor) -> torch.Tensor:
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
    extra: dict = field(default_factory=dict)
