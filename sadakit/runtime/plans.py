"""What a decision produces: the call's plan, its token plan, and the one host read behind it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..core import tokens
from ..core.parameterization import NoiseLevel
from .host_read import to_host

Grid = tuple[int, ...]


@dataclass
class TokenPlan:
    """Which tokens each block recomputes on a partial call (indices built lazily per grid)."""

    pooled: dict[Grid, torch.Tensor]  # grid -> (B_active, N) scores
    required: dict[Grid, torch.Tensor]  # grid -> (B_active, N) bool
    k: dict[Grid, int]  # grid -> tokens per row, only grids worth pruning
    #: grid -> per call stream, the tokens any of the stream's rows requires (read with the
    #: decision, so a shared token set costs no host read of its own)
    shared_k: dict[Grid, list[int]] = field(default_factory=dict)
    stream: int = 0  # the call stream this plan serves (after ``subset``)
    _indices: dict = field(default_factory=dict)

    def subset(self, positions: list[int], stream: int = 0) -> "TokenPlan":
        """The plan for some of its rows: one call stream's rows of a step."""
        first = next(iter(self.pooled.values()))
        if positions == list(range(first.shape[0])) and stream == self.stream:
            return self
        index = torch.tensor(positions, device=first.device)
        return TokenPlan({g: v.index_select(0, index) for g, v in self.pooled.items()},
                         {g: v.index_select(0, index) for g, v in self.required.items()}, dict(self.k),
                         self.shared_k, stream)

    def bucketed(self, fractions: tuple[float, ...]) -> "TokenPlan":
        """The plan with every token count rounded up to the next bucket (a fraction of the
        grid's tokens, else all of them): few distinct shapes per generation, for CUDA graphs."""
        def up(k: int, grid: Grid) -> int:
            n = math.prod(grid)
            return next((size for size in sorted(math.ceil(f * n) for f in fractions) if size >= k), n)

        return TokenPlan(self.pooled, self.required, {g: up(k, g) for g, k in self.k.items()},
                         {g: [up(k, g) for k in ks] for g, ks in self.shared_k.items()}, self.stream)

    def indices(self, grid: Grid) -> torch.Tensor | None:
        """(B, k) sorted token indices per row, or None when this grid is not pruned."""
        if grid not in self.k:
            return None
        if grid not in self._indices:
            self._indices[grid] = tokens.select_indices(self.pooled[grid], self.required[grid], self.k[grid])
        return self._indices[grid]

    def shared_indices(self, grid: Grid) -> torch.Tensor | None:
        """(k,) one sorted index set for every row: the union of the rows' required tokens.

        For blocks whose per-token arguments have no batch dimension (rotary tables). The size
        is the union over the stream's rows, read with the decision: exact when every row of
        the stream is computed, a superset (more tokens, never fewer) otherwise.
        """
        if grid not in self.k:
            return None
        key = ("shared", grid)
        if key not in self._indices:
            required = self.required[grid].any(dim=0, keepdim=True)
            pooled = self.pooled[grid].amax(dim=0, keepdim=True)
            if self.required[grid].shape[0] == 1:
                k = self.k[grid]
            else:
                k = min(self.shared_k[grid][self.stream], required.shape[-1])
            self._indices[key] = tokens.select_indices(pooled, required, k)[0]
        return self._indices[key]


@dataclass
class CallPlan:
    """The decision for one step: which row groups are computed or skipped, and how."""

    lvl: NoiseLevel
    x_flow: torch.Tensor
    computed_groups: list[int]
    skipped_groups: list[int]
    x0_hat: torch.Tensor | None  # extrapolated x0 of every row (used for the skipped ones)
    token_plan: TokenPlan | None
    tau_host: float


@dataclass
class HostRead:
    """Everything a decision needs on the host, fetched from the device in one read.

    ``finite`` and ``stable`` are per row group (extrapolation finite; criterion says stable);
    ``required_tokens`` per token grid and row (tokens the criterion and anchors require).
    """

    tau: float
    uniform_timesteps: bool
    finite: list[bool]
    stable: list[bool]
    required_tokens: dict[Grid, list[float]]
    union_tokens: dict[Grid, list[float]]  # per grid and call stream

    @classmethod
    def read(cls, tau: torch.Tensor, uniform: torch.Tensor, finite: torch.Tensor, stable: torch.Tensor | None,
             required_counts: dict[Grid, torch.Tensor], union_counts: dict[Grid, torch.Tensor]) -> "HostRead":
        """Pack the device values, read them with one ``.tolist()``, unpack by name."""
        parts = [tau.reshape(1), uniform.reshape(1), finite.reshape(-1)]
        parts += [stable.reshape(-1)] if stable is not None else []
        parts += [c.reshape(-1) for c in required_counts.values()]
        parts += [c.reshape(-1) for c in union_counts.values()]
        host = to_host(torch.cat([p.to(torch.float32) for p in parts]))  # the one host read
        groups = finite.numel()
        finite_host = [v > 0.5 for v in host[2: 2 + groups]]
        at = 2 + groups
        stable_host: list[bool] = []
        if stable is not None:
            stable_host = [v > 0.5 for v in host[at: at + groups]]
            at += groups
        required: dict[Grid, list[float]] = {}
        for grid, counts in required_counts.items():
            required[grid] = host[at: at + counts.numel()]
            at += counts.numel()
        unions: dict[Grid, list[float]] = {}
        for grid, counts in union_counts.items():
            unions[grid] = host[at: at + counts.numel()]
            at += counts.numel()
        return cls(host[0], host[1] > 0.5, finite_host, stable_host, required, unions)
