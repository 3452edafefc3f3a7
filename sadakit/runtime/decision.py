"""The decision for one step: a function of the generation's state, the config and the call.

Per call: convert the state to the flow chart, evaluate the stability criterion against the
drift history, speculatively extrapolate x0 and count unstable tokens on the device, then read
one small named structure to the host (:class:`~sadakit.runtime.plans.HostRead`) and apply the
guard rails there. Nothing here runs a network or touches the report beyond notes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..config import SADAConfig
from ..core import criterion, tokens
from ..core.extrapolation import extrapolate
from ..core.parameterization import NoiseLevel, to_flow
from ..spec import LatentToGrid
from . import budget as budget_plan
from .plans import CallPlan, Grid, HostRead, TokenPlan
from .state import GenerationState

_NEW_GENERATION_TOL = 1e-6


@dataclass
class Decision:
    """A plan, or word that this call starts a new generation (an interrupted one before it)."""

    plan: CallPlan
    new_generation: bool = False


class Decider:
    """Decides steps for one accelerated pipeline (stateless beyond its configuration)."""

    def __init__(self, config: SADAConfig, latent_to_grid: LatentToGrid, note: Callable[[str], None]) -> None:
        self.config = config
        self.latent_to_grid = latent_to_grid
        self.note = note

    def phase(self, state: GenerationState, n: int) -> str:
        """Where call ``n`` sits: warmup, criterion, late (scheduled extrapolation) or final."""
        cfg = self.config
        expected = state.expected_calls
        warmup = cfg.warmup_calls
        if expected is not None:
            warmup = max(warmup, round(cfg.warmup_fraction * expected))
            if n >= expected - cfg.final_calls:
                return "final"
        if cfg.budget_planned:
            if expected is None:
                self.note("SADAConfig.budget needs the generation's number of calls (the scheduler's timesteps); "
                          "every call computed")
                return "final"
            return "budget"
        if n < warmup:
            return "warmup"
        if cfg.skip_steps and cfg.late_phase_start is not None and expected is not None and n >= self.late_index(state):
            return "late"
        return "criterion"

    def planned_calls(self, state: GenerationState) -> tuple[int, ...]:
        """The calls a budget plan computes (cached per call count)."""
        cfg = self.config
        return budget_plan.computed_calls(state.expected_calls, cfg.budget, cfg.budget_warmup_calls, cfg.final_calls,
                                          cfg.budget_spread)

    def late_order(self, state: GenerationState) -> int:
        """Extrapolation order of the current late-phase call (``late_phase_order``, or automatic:
        2 at intervals up to 3, else 1 over the first half of the interval and 0 beyond, as the
        budget plan does; measured in docs/frontier.md)."""
        cfg = self.config
        if cfg.late_phase_order is not None:
            return cfg.late_phase_order
        interval = cfg.interval_for(state.expected_calls)
        if interval <= 3:
            return 2
        gap = (state.call_index - self.late_index(state)) % interval
        return 1 if gap <= min(math.ceil(interval / 2), budget_plan.AUTO_GAP_CAP) else 0

    def late_index(self, state: GenerationState) -> int:
        return math.ceil(self.config.late_phase_start * state.expected_calls)

    def extrapolate(self, state: GenerationState, lvl: NoiseLevel, x_model: torch.Tensor, order: int) -> torch.Tensor:
        """x0 estimate at the current time from the last ``order + 1`` computed calls of every row."""
        t_eval = lvl.tau.expand(state.batch_size)
        values, times = state.values[: order + 1], state.value_times[: order + 1]
        out_hat = extrapolate(values, times, t_eval)
        if self.config.extrapolation == "x0":
            return out_hat
        return state.parameterization.x0_from_output(x_model.float(), out_hat, lvl)

    def decide(self, state: GenerationState, x_model: torch.Tensor, timestep: Any, arguments: dict,
               eligible_grids: Callable[[], list[Grid]]) -> Decision:
        """Decide call ``state.call_index``: which row groups to skip, and the token plan."""
        cfg = self.config
        device = x_model.device
        b, g = state.batch_size, state.num_groups
        lvl = state.parameterization.level(timestep, device)
        x_flow = to_flow(x_model, lvl)
        t = torch.as_tensor(timestep, device=device).reshape(-1)
        uniform = (t == t[0]).all()
        phase = self.phase(state, state.call_index) if cfg.enabled and state.judged else "off"
        nodes = state.newest_nodes()
        use_criterion = phase == "criterion" and len(nodes) == 3
        order = self.late_order(state) if phase == "late" else cfg.extrapolation_order
        planned_skip = False
        if phase == "budget":
            plan_calls = self.planned_calls(state)
            planned_skip = state.call_index not in plan_calls
            order = budget_plan.order_for(plan_calls, state.call_index, cfg.budget_order, cfg.budget_order_gap)
        x0_hat = None
        if cfg.skip_steps and (phase in ("criterion", "late") or planned_skip) and state.values is not None:
            x0_hat = self.extrapolate(state, lvl, x_model, order)
            # checked as the pipeline would get it: after the cast to the model's dtype, where an
            # fp16 overflow becomes inf
            out_hat = state.parameterization.output_from_x0(x_model.float(), x0_hat, lvl).to(x_model.dtype)
            finite = (torch.isfinite(x0_hat.reshape(b, -1)).all(dim=1)
                      & torch.isfinite(out_hat.reshape(b, -1)).all(dim=1))[state.groups].all(dim=1)
        else:
            finite = torch.zeros(g, device=device)
        grids: list[Grid] = []
        pooled: dict = {}
        required: dict = {}
        stable = None
        if use_criterion:
            m = criterion.stability_momentum(
                x_flow, nodes[0].x_flow, [n.drift for n in nodes], [n.tau for n in nodes], lvl.tau
            )
            stable = criterion.group_scores(criterion.sample_scores(m), state.groups) <= 0
            grids = eligible_grids() if cfg.token_sparsity else []
            if grids:
                tok = self.latent_to_grid(m, arguments)  # (B, *grid)
                tok = tok[state.groups].mean(dim=1)[state.index(state.row_group)]
                for grid in grids:
                    p = tokens.pool_scores(tok, grid)
                    anchors = tokens.anchor_mask(grid, cfg.anchor_window, state.call_index, device)
                    pooled[grid], required[grid] = p, tokens.required_mask(p, anchors)
        counts = {grid: r.sum(dim=1) for grid, r in required.items()}
        # per stream: tokens any of its rows requires, for blocks whose rows share one token set
        unions = {grid: r.reshape(state.streams, -1, r.shape[-1]).any(dim=1).sum(dim=1) for grid, r in required.items()}
        host = HostRead.read(lvl.tau, uniform, finite, stable, counts, unions)
        full = CallPlan(lvl, x_flow, list(range(g)), [], None, None, host.tau)
        if state.last_tau is not None and host.tau > state.last_tau + _NEW_GENERATION_TOL:
            return Decision(full, new_generation=True)  # the previous generation was interrupted
        if not host.uniform_timesteps and cfg.enabled:
            self.note("criterion off: rows of one call had different timesteps")
            return Decision(full)
        if state.last_tau is not None and abs(host.tau - state.last_tau) <= 1e-7 and not planned_skip:
            # a solver's second stage at the same noise level (Heun): no step to judge. A budget
            # plan needs no judging: a skip there reuses the x0 of the call before (the Lagrange
            # polynomial through a node at this very time is that node's value)
            return Decision(full)
        skipped = self._skipped_groups(state, phase, order, use_criterion, x0_hat is not None, host, planned_skip)
        skipped_set = set(skipped)
        computed = [gi for gi in range(g) if gi not in skipped_set]
        token_plan = None
        if grids and computed and all(state.last_computed[gi] for gi in computed):
            token_plan = self._token_plan(state, computed, grids, pooled, required, host)
        return Decision(CallPlan(lvl, x_flow, computed, skipped, x0_hat, token_plan, host.tau))

    def _skipped_groups(self, state: GenerationState, phase: str, order: int, use_criterion: bool,
                        extrapolated: bool, host: HostRead, planned_skip: bool = False) -> list[int]:
        """Groups to skip; host-side work stays O(rows) (this runs on every call, at any batch)."""
        if not extrapolated:
            return []
        cfg = self.config
        late_skip = planned_skip or phase == "late" and (
            (state.call_index - self.late_index(state)) % cfg.interval_for(state.expected_calls) != 0
        )
        counts, members = state.value_counts, state.members
        skipped = []
        for gi in range(state.num_groups):
            if not all(counts[r] >= order + 1 for r in members[gi]):
                continue  # too few computed calls to extrapolate from (the history is young)
            if not host.finite[gi]:
                self.note("an extrapolated output was not finite; computed instead")
                continue
            if late_skip or (use_criterion and host.stable[gi]
                             and state.consecutive_skips[gi] < cfg.max_consecutive_skips):
                skipped.append(gi)
        return skipped

    def _token_plan(self, state: GenerationState, computed: list[int], grids: list[Grid], pooled: dict,
                    required: dict, host: HostRead) -> TokenPlan | None:
        """Tokens per grid for the computed rows: the most any of them requires, if worth it."""
        cfg = self.config
        rows_host = state.group_rows(computed)
        ks = {}
        for grid in grids:
            counts = host.required_tokens[grid]
            k = int(max(counts[r] for r in rows_host))
            if k <= cfg.max_token_fraction * math.prod(grid):
                ks[grid] = max(k, 1)
        if not ks:
            self.note(f"token sparsity inactive on some calls: more than {cfg.max_token_fraction:.0%} of the "
                      "tokens were unstable (SADAConfig.max_token_fraction)")
            return None
        if len(rows_host) != state.batch_size:
            rows = state.index(rows_host)
            pooled = {kk: v.index_select(0, rows) for kk, v in pooled.items()}
            required = {kk: v.index_select(0, rows) for kk, v in required.items()}
        shared_k = {grid: [max(int(u), 1) for u in host.union_tokens[grid]] for grid in ks}
        return TokenPlan(pooled=pooled, required=required, k=ks, shared_k=shared_k)
