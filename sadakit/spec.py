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

    Along ``dim`` the argument holds one entry per grid token (the block's N image or video
    tokens, in the hidden states' order) and possibly entries of other tokens, which are always
    kept. ``others`` says where those lie: ``"leading"`` (the grid tokens are the *last* N
    entries; text tokens in front: Flux's rotary table holds T + N rows) or ``"trailing"`` (the
    grid tokens are the *first* N; HunyuanVideo's attention mask covers [video, text]). On a
    partial call the runtime keeps the other entries and the selected tokens' entries. When the
    size along ``dim`` is not at least N the argument is passed unchanged along it (Wan's
    modulation is per token only in 2.2 TI2V, (B, N, 6, C); in 2.1 it is (B, 6, C); a mask's
    broadcast query axis of size 1 likewise).

    ``dim`` may be a tuple of axes, each cut the same way: an attention mask (B, 1, S, S) is per
    token along its query and its key axis. A mask's key axis must be cut too, never kept
    whole: pruned tokens are not in the block's hidden states, so they are not keys either.

    A tuple or list argument such as ``(cos, sin)`` is indexed element-wise; ``elements`` names
    the positions of the per-token elements when only some are (Qwen-Image's rotary pair
    ``(image_freqs, text_freqs)``: ``elements=(0,)``), the others pass unchanged.

    ``dim=0`` (or 0 among the axes), or a size of 1 along dimension 0, means the argument has no
    batch dimension: all rows of such a call then share one token set (the union of the rows'
    required tokens).
    """

    dim: int | tuple[int, ...] = 1
    others: str = "leading"
    elements: tuple[int, ...] | None = None

    @property
    def dims(self) -> tuple[int, ...]:
        """The token axes, as a tuple."""
        return self.dim if isinstance(self.dim, tuple) else (self.dim,)

    def problem(self) -> str | None:
        """What is wrong with this declaration, or None (checked where the block is named)."""
        dims = self.dims
        if not dims or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in dims):
            return f"dim must be a non-negative int or a non-empty tuple of them, got {self.dim!r}"
        if len(set(dims)) != len(dims):
            return f"dim names an axis twice: {self.dim!r}"
        if self.others not in TOKEN_OTHERS:
            return f"others must be one of {TOKEN_OTHERS}, got {self.others!r}"
        if self.elements is not None and (
                not isinstance(self.elements, tuple) or not self.elements
                or not all(isinstance(e, int) and not isinstance(e, bool) and e >= 0 for e in self.elements)):
            return f"elements must be None or a non-empty tuple of non-negative ints, got {self.elements!r}"
        return None


#: where a token argument's (or the hidden states') entries that are not grid tokens lie
TOKEN_OTHERS = ("leading", "trailing")


@dataclass(frozen=True)
class OtherTokens:
    """Tokens of a block's hidden states that are not on the token grid, computed on every call
    and never pruned: a global token prepended to the sequence (Stable Audio), or text tokens
    concatenated with the image tokens (Chroma's single-stream blocks, [text, image]).

    ``where``: in front of the grid tokens (``"leading"``) or after them (``"trailing"``).
    ``count``: how many; None means all the tokens beyond the grid's, which may change with the
    prompt's length (``layout="exact"`` only: there the grid's token count is known).
    Token arguments of such a block cover the same sequence: declare their other entries on
    the same side (``TokenArg.others``).
    """

    where: str = "leading"
    count: int | None = None


@dataclass(frozen=True)
class TokenBlockSpec:
    """A block whose hidden-states argument is (B, N, C) tokens on the latent's token grid.

    The grid comes from :attr:`DenoiserSpec.latent_to_grid` (any number of axes, e.g. frames x
    height x width). ``layout`` says how the block's N tokens relate to that grid:

    * ``"halved"``: the grid with every axis halved (ceil) k >= 0 times, row-major (UNet
      transformer blocks at each resolution; non-square and odd grids included);
    * ``"exact"``: exactly the grid, row-major (DiT blocks; the latent's tokens themselves).

    Hidden states holding other tokens besides the grid's declare them in ``other_tokens``
    (:class:`OtherTokens`). A block whose N matches no such grid is run in full and the report
    says so.
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
    #: tokens of the hidden states that are not grid tokens (always computed), or None
    other_tokens: OtherTokens | None = None

    def __post_init__(self) -> None:
        what = f"TokenBlockSpec {self.name!r}"
        if self.layout not in TOKEN_LAYOUTS:
            raise ValueError(f"{what}: layout must be one of {TOKEN_LAYOUTS}, got {self.layout!r}")
        for arg, how in self.token_args.items():
            if not isinstance(how, TokenArg):
                raise TypeError(f"{what}: token_args[{arg!r}] must be a sadakit.TokenArg, got {type(how).__name__}")
            problem = how.problem()
            if problem:
                raise ValueError(f"{what}: token_args[{arg!r}]: {problem}")
        if self.hidden_arg in self.token_args:
            raise ValueError(f"{what}: token_args[{self.hidden_arg!r}] is the hidden-states argument, which the "
                             "layout (and other_tokens) already cut; declare only the other per-token arguments")
        other = self.other_tokens
        if other is not None:
            if not isinstance(other, OtherTokens):
                raise TypeError(f"{what}: other_tokens must be a sadakit.OtherTokens, got {type(other).__name__}")
            if other.where not in TOKEN_OTHERS:
                raise ValueError(f"{what}: other_tokens.where must be one of {TOKEN_OTHERS}, got {other.where!r}")
            if other.count is not None and (not isinstance(other.count, int) or isinstance(other.count, bool)
                                            or other.count < 0):
                raise ValueError(f"{what}: other_tokens.count must be None or a non-negative int, got {other.count!r}")
            if other.count is None and self.layout != "exact":
                raise ValueError(f"{what}: other_tokens.count=None (all tokens beyond the grid's) needs "
                                 f"layout='exact'; with layout={self.layout!r} give the count")
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
