"""Small value objects with which plugins describe their pipelines to the core runtime."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping

import torch

#: Turns the per-element stability map of the latent (same shape as the denoiser's sample) into
#: a per-token grid (B, *grid): (B, H, W) for images, (B, F, H, W) for video, (B, T) or
#: (B, T, F) for audio. It also receives the denoiser call's bound arguments (e.g. Flux's
#: ``img_ids`` give the packed grid). Token blocks see this grid (``layout="exact"``) or its
#: halvings (``layout="halved"``).
LatentToGrid = Callable[[torch.Tensor, dict[str, Any]], torch.Tensor]


def channels_first_grid(m: torch.Tensor, arguments: dict[str, Any]) -> torch.Tensor:
    """(B, C, *grid) latents (UNets, spectrograms, video latents): mean over channels."""
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
    #: Names the call stream of a denoiser call from its bound arguments, for pipelines that
    #: call the denoiser more than once per step (one call per CFG branch) without diffusers'
    #: ``cache_context``; asked only when the pipeline sets no cache context (whose name is the
    #: stream otherwise). None: such calls belong to one stream.
    call_stream: Callable[[dict[str, Any]], str | None] | None = None
    #: Further modules that take the denoiser's place at some steps and are called the same way
    #: (Wan 2.2 A14B's low-noise expert ``transformer_2``). Each is served like ``module``. A call
    #: to another module than the previous call's is an *expert switch*: extrapolation never
    #: spans it (the new expert's calls are computed until it has the history an extrapolation
    #: needs) and the report counts every module's calls.
    experts: tuple[torch.nn.Module, ...] = ()
    #: For a sample argument that carries condition channels after the noisy latent (image-to-
    #: video pipelines concatenate the encoded image: Wan I2V's 16 noisy + 20 condition
    #: channels): how many channels at its start, along ``channel_dim``, are the noisy latent.
    #: The denoiser's output is in their chart; SADA reads and extrapolates only them. None: the
    #: whole sample is the noisy latent.
    noisy_channels: int | None = None
    channel_dim: int = 1

    def __post_init__(self) -> None:
        experts = tuple(self.experts)
        for i, expert in enumerate(experts):
            if not isinstance(expert, torch.nn.Module):
                raise TypeError(f"DenoiserSpec.experts[{i}] must be a torch.nn.Module, got {type(expert).__name__}")
        if len({id(m) for m in (self.module, *experts)}) != len(experts) + 1:
            raise ValueError("DenoiserSpec.experts must be modules other than DenoiserSpec.module, each named once")
        if self.noisy_channels is not None and (not isinstance(self.noisy_channels, int) or isinstance(
                self.noisy_channels, bool) or self.noisy_channels < 1):
            raise ValueError(f"DenoiserSpec.noisy_channels must be a positive int or None, got {self.noisy_channels!r}")
        if not isinstance(self.channel_dim, int) or self.channel_dim < 1:
            raise ValueError(f"DenoiserSpec.channel_dim must be an int >= 1 (dimension 0 is the batch), "
                             f"got {self.channel_dim!r}")
        object.__setattr__(self, "experts", experts)

    @property
    def modules(self) -> tuple[torch.nn.Module, ...]:
        """The denoiser and its experts, in that order (an expert's index in the report)."""
        return (self.module, *self.experts)

    def noisy_sample(self, sample: torch.Tensor) -> torch.Tensor:
        """The noisy latent in the denoiser's sample argument (see :attr:`noisy_channels`)."""
        if self.noisy_channels is None:
            return sample
        size = sample.shape[self.channel_dim] if sample.dim() > self.channel_dim else 0
        if size < self.noisy_channels:
            raise ValueError(f"the denoiser's sample has {size} channels along dimension {self.channel_dim}, fewer "
                             f"than the {self.noisy_channels} noisy channels its DenoiserSpec declares")
        return sample.narrow(self.channel_dim, 0, self.noisy_channels)


class StreamsByRepeatedSample:
    """A :attr:`DenoiserSpec.call_stream` for pipelines that call the denoiser once per CFG
    branch on the very same latent tensor: the k-th consecutive call on one tensor is stream
    ``"call{k}"``. A solver step makes a new latent tensor, so each step starts at ``"call0"``.
    """

    def __init__(self, sample_arg: str) -> None:
        self.sample_arg = sample_arg
        self._last: weakref.ref | None = None
        self._repeat = 0

    def __call__(self, arguments: dict[str, Any]) -> str:
        sample = arguments[self.sample_arg]
        if self._last is not None and self._last() is sample:
            self._repeat += 1
        else:
            self._last, self._repeat = weakref.ref(sample), 0
        return f"call{self._repeat}"


@dataclass(frozen=True)
class TokenArg:
    """A block argument indexed by token, next to the hidden states (rotary tables, masks,
    per-token modulation).

    Along ``dim`` the argument's *last* N entries belong to the block's N image tokens, in the
    hidden states' order; entries in front of them (text tokens in a joint sequence: Flux's
    rotary table holds T + N rows) are always kept. On a partial call the runtime keeps the
    leading entries and the selected tokens' entries of every tensor in the argument (a tuple
    such as ``(cos, sin)`` is indexed element-wise). When the size along ``dim`` is not
    at least N the argument is passed unchanged (Wan's modulation is per token only in 2.2
    TI2V, (B, N, 6, C); in 2.1 it is (B, 6, C)).

    ``dim=0``, or a size of 1 along dimension 0, means the argument has no batch dimension: all
    rows of such a call then share one token set (the union of the rows' required tokens).
    """

    dim: int = 1


@dataclass(frozen=True)
class TokenBlockSpec:
    """A block whose hidden-states argument is (B, N, C) tokens on the latent's token grid.

    The grid comes from :attr:`DenoiserSpec.latent_to_grid` (any number of axes, e.g. frames x
    height x width). ``layout`` says how the block's N tokens relate to that grid:

    * ``"halved"``: the grid with every axis halved (ceil) k >= 0 times, row-major (UNet
      transformer blocks at each resolution; non-square and odd grids included);
    * ``"exact"``: exactly the grid, row-major (DiT blocks; the latent's tokens themselves).

    A block whose N matches no such grid is run in full and the report says so.
    """

    module: torch.nn.Module
    name: str
    layout: str = "halved"
    #: name of the hidden-states argument; positional calls are matched through the block's
    #: ``forward`` signature
    hidden_arg: str = "hidden_states"
    #: other arguments indexed by token, by name (positional ones are bound by signature)
    token_args: Mapping[str, TokenArg] = field(default_factory=dict)
    #: when the block returns a tuple, the position of the image tokens in it (Flux blocks
    #: return ``(text, image)``: 1); None: the block returns the hidden states
    output_index: int | None = None

    def __post_init__(self) -> None:
        if self.layout not in TOKEN_LAYOUTS:
            raise ValueError(f"TokenBlockSpec {self.name!r}: layout must be one of {TOKEN_LAYOUTS}, got {self.layout!r}")
        for arg, how in self.token_args.items():
            if not isinstance(how, TokenArg):
                raise TypeError(f"TokenBlockSpec {self.name!r}: token_args[{arg!r}] must be a sadakit.TokenArg, "
                                f"got {type(how).__name__}")
        object.__setattr__(self, "token_args", MappingProxyType(dict(self.token_args)))


TOKEN_LAYOUTS = ("halved", "exact")


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
