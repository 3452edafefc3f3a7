"""Per-generation state of the SADA runtime: trajectory history and per-group guard rails.

Everything proportional to the latent lives on the pipeline's device in float32; the host
keeps only counters and the noise level of the previous call.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import torch

from ..core.parameterization import NoiseLevel, Parameterization


@dataclass
class TrajectoryNode:
    """One denoiser call as the solver saw it, in the flow chart."""

    tau: torch.Tensor  # 0-d
    x_flow: torch.Tensor  # (B, ...)
    drift: torch.Tensor  # (B, ...)


@dataclass
class GenerationState:
    """What one generation has seen so far."""

    parameterization: Parameterization
    batch_shape: tuple[int, ...]
    groups: torch.Tensor  # (G, M) rows deciding together
    row_group: list[int]  # row -> group
    expected_calls: int | None
    history_len: int  # computed values kept for extrapolation (order + 1)
    call_index: int = 0
    last_tau: float | None = None
    nodes: deque = field(default_factory=lambda: deque(maxlen=3))
    values: torch.Tensor | None = None  # (K, B, ...) x0 (or raw output) of computed calls
    value_times: torch.Tensor | None = None  # (K, B)
    value_counts: list[int] = field(default_factory=list)  # per row, how many of K are filled
    value_last_tau: list = field(default_factory=list)  # per row, time of the newest entry (host)
    consecutive_skips: list[int] = field(default_factory=list)  # per group
    last_computed: list[bool] = field(default_factory=list)  # per group
    latent_grid: tuple[int, ...] | None = None  # the latent's token grid (any number of axes)
    judged: bool = True  # False: a sampler SADA cannot judge (every call computed)
    streams: int = 1  # call streams per step (their rows side by side)
    _members: list[list[int]] | None = None
    _indices: dict = field(default_factory=dict)  # row lists -> device index tensors

    def index(self, rows: list[int]) -> torch.Tensor:
        """``rows`` as a long tensor on the state's device, made once per generation.

        Why: building it from a host list every call is a host-to-device copy per call (and
        on a GPU one that can wait for the network); a generation sees few distinct row sets.
        """
        key = tuple(rows)
        hit = self._indices.get(key)
        if hit is None:
            if len(self._indices) >= 256:
                self._indices.clear()
            hit = self._indices[key] = torch.tensor(key, dtype=torch.long, device=self.groups.device)
        return hit

    @property
    def batch_size(self) -> int:
        return self.batch_shape[0]

    @property
    def num_groups(self) -> int:
        return self.groups.shape[0]

    @property
    def members(self) -> list[list[int]]:
        """The rows of each group, in order."""
        if self._members is None:
            self._members = [[] for _ in range(self.num_groups)]
            for r, g in enumerate(self.row_group):
                self._members[g].append(r)
        return self._members

    def group_rows(self, group_ids: list[int]) -> list[int]:
        if len(group_ids) == self.num_groups:
            return list(range(self.batch_size))
        return sorted(r for g in group_ids for r in self.members[g])

    def push_node(self, lvl: NoiseLevel, x_flow: torch.Tensor, drift: torch.Tensor, tau_host: float) -> None:
        """Append the call to the drift history; a repeated time (Heun's second stage at the
        same noise level) replaces the previous node instead of creating a zero-width step."""
        if self.last_tau is not None and abs(tau_host - self.last_tau) <= 1e-7 and self.nodes:
            self.nodes.pop()
        self.nodes.append(TrajectoryNode(lvl.tau.detach(), x_flow.detach(), drift.detach()))
        self.last_tau = tau_host

    def newest_nodes(self) -> list[TrajectoryNode]:
        """Newest first."""
        return list(reversed(self.nodes))

    def push_values(self, values: torch.Tensor, tau: torch.Tensor, tau_host: float, rows_host: list[int]) -> None:
        """Roll the extrapolation history for the computed rows only.

        A row computed again at the time of its newest entry (Heun's second stage) overwrites
        that entry: two nodes at one time would make the Lagrange weights divide by zero.
        """
        values = values.detach()
        b = values.shape[0]
        if self.values is None:
            self.values = values.unsqueeze(0).repeat(self.history_len, *([1] * values.dim()))
            self.value_times = tau.reshape(1, 1).expand(self.history_len, b).clone()
            self.value_counts = [0] * b
            self.value_last_tau = [None] * b
        roll = [r for r in rows_host if self.value_last_tau[r] is None or abs(self.value_last_tau[r] - tau_host) > 1e-7]
        rolled_rows = set(roll)
        replace = [r for r in rows_host if r not in rolled_rows]
        device = values.device
        view = [1, b] + [1] * (values.dim() - 1)
        if roll:
            rolled = torch.cat([values.unsqueeze(0), self.values[:-1]], dim=0)
            rolled_t = torch.cat([tau.reshape(1, 1).expand(1, b), self.value_times[:-1]], dim=0)
            if len(roll) == b:
                self.values, self.value_times = rolled, rolled_t
            else:
                mask = torch.zeros(b, dtype=torch.bool, device=device)
                mask[self.index(roll)] = True
                self.values = torch.where(mask.reshape(view), rolled, self.values)
                self.value_times = torch.where(mask.reshape(1, b), rolled_t, self.value_times)
        if replace:
            idx = self.index(replace)
            self.values[0, idx] = values[idx]
        for r in roll:
            self.value_counts[r] = min(self.value_counts[r] + 1, self.history_len)
        for r in rows_host:
            self.value_last_tau[r] = tau_host

    def forget_history(self) -> None:
        """Drop the extrapolation values and the drift nodes (an expert switch: they came from
        another network); the noise level of the last call stays, to tell a new generation."""
        self.nodes.clear()
        self.values = self.value_times = None
        self.value_counts = [0] * self.batch_size
        self.value_last_tau = [None] * self.batch_size

    def cache_bytes(self) -> int:
        total = 0
        for node in self.nodes:
            total += node.x_flow.numel() * node.x_flow.element_size() * 2
        if self.values is not None:
            total += self.values.numel() * self.values.element_size()
        return total
