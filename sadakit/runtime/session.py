"""The SADA runtime bound to one pipeline: decides every denoiser call and runs it.

Per call: convert the state to the flow chart, evaluate the stability criterion against the
drift history, speculatively extrapolate x0 and count unstable tokens, then read one small
vector to the host (noise level, per-group decisions, finiteness, token counts). The host
applies the guard rails and runs the network on the rows that must be computed, fully or on
a token subset; skipped rows get the extrapolated output.
"""

from __future__ import annotations

import inspect
import math
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..config import SADAConfig
from ..core import criterion, tokens
from ..core.extrapolation import extrapolate
from ..core.parameterization import NoiseLevel, flow_drift, to_flow
from ..plugins.spec import ControlSpec, DenoiserSpec, TokenBlockSpec
from .batching import map_tensors, output_tensor, rebuild_output, scatter_rows, select_rows
from .report import GenerationReport
from .state import GenerationState

_NEW_GENERATION_TOL = 1e-6


@dataclass
class TokenPlan:
    """Which tokens each block recomputes on a partial call (indices built lazily per grid)."""

    pooled: dict[tuple[int, int], torch.Tensor]  # grid -> (B_active, N) scores
    required: dict[tuple[int, int], torch.Tensor]  # grid -> (B_active, N) bool
    k: dict[tuple[int, int], int]  # grid -> tokens per row, only grids worth pruning
    _indices: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)

    def indices(self, grid: tuple[int, int]) -> torch.Tensor | None:
        if grid not in self.k:
            return None
        if grid not in self._indices:
            self._indices[grid] = tokens.select_indices(self.pooled[grid], self.required[grid], self.k[grid])
        return self._indices[grid]

    def shared_indices(self, grid: tuple[int, int]) -> torch.Tensor | None:
        """(k,) one sorted index set for every row: the union of the rows' required tokens.

        For blocks whose positional tables have no batch dimension (Flux rotary embeddings).
        With several rows the union size costs one scalar host read per call and grid.
        """
        if grid not in self.k:
            return None
        key = ("shared", grid)
        if key not in self._indices:
            required = self.required[grid].any(dim=0, keepdim=True)
            pooled = self.pooled[grid].amax(dim=0, keepdim=True)
            k = self.k[grid] if self.required[grid].shape[0] == 1 else max(int(required.sum()), 1)
            self._indices[key] = tokens.select_indices(pooled, required, k)[0]
        return self._indices[key]


@dataclass
class CallPlan:
    """The host's decision for one denoiser call."""

    lvl: NoiseLevel
    x_flow: torch.Tensor
    computed_groups: list[int]
    skipped_groups: list[int]
    x0_hat: torch.Tensor | None
    token_plan: TokenPlan | None
    tau_host: float


@dataclass
class _Call:
    """One denoiser call between its decision and its record."""

    plan: CallPlan
    x_model: torch.Tensor
    return_dict: Any
    rows: torch.Tensor
    rows_host: list[int]
    overhead: float
    run_args: tuple | None = None
    run_kwargs: dict | None = None
    output: Any = None


class SADASession:
    """Runtime state and logic for one accelerated pipeline."""

    def __init__(
        self,
        pipe: Any,
        plugin: Any,
        config: SADAConfig,
        denoiser: DenoiserSpec,
        token_blocks: list[TokenBlockSpec],
        controls: list[ControlSpec] | None = None,
    ) -> None:
        self.controls = controls or []
        self._pipe_ref = weakref.ref(pipe)
        self.plugin = plugin
        self.config = config
        self.denoiser = denoiser
        self.token_blocks = token_blocks
        self.signature = inspect.signature(denoiser.module.forward)
        self.state: GenerationState | None = None
        self.current = GenerationReport(family=plugin.family)
        self.last: GenerationReport | None = None
        # set during a network call, read by block hooks
        self.token_plan: TokenPlan | None = None
        self.active_rows: torch.Tensor | None = None
        self.block_tokens: dict[str, int] = {}
        self.block_caches: dict[str, torch.Tensor] = {}
        self._flops_measured: dict[tuple, tuple[float, dict[str, float]]] = {}
        self.flop_counter = None
        self._measuring_blocks: dict[str, float] = {}
        self._last_output: Any = None
        self._pending: tuple | None = None
        self._control_template: dict[int, Any] = {}

    # ------------------------------------------------------------------ lifecycle
    @property
    def pipe(self) -> Any:
        return self._pipe_ref()

    def finish_generation(self) -> None:
        """Called by diffusers at the end of every pipeline call (and on a new generation)."""
        if self.current.denoiser_calls:
            if self.state is not None:
                self.current.cache_bytes = self.state.cache_bytes() + sum(
                    c.numel() * c.element_size() for c in self.block_caches.values()
                )
            self.last = self.current
        self.current = GenerationReport(family=self.plugin.family)
        self.state = None
        self.block_caches.clear()
        self._last_output = None
        self.token_plan = None
        self.active_rows = None
        self._pending = None
        self._control_template.clear()

    def report(self) -> GenerationReport | None:
        return self.current if self.current.denoiser_calls else self.last

    @staticmethod
    def _expected_calls(pipe: Any) -> int | None:
        """Denoiser calls this generation will make: the pipelines loop over the scheduler's
        timesteps (one call each, two-stage solvers interleave theirs), from ``begin_index``
        on for img2img-style partial denoising, and up to ``denoising_end`` (SDXL's base
        handing over to a refiner), which the pipeline applies to a local copy only."""
        scheduler = getattr(pipe, "scheduler", None)
        timesteps = getattr(scheduler, "timesteps", None)
        if timesteps is None:
            return None
        begin = int(getattr(scheduler, "begin_index", None) or 0)
        timesteps = timesteps[begin:]
        end = getattr(pipe, "_denoising_end", None)
        if isinstance(end, float) and 0.0 < end < 1.0:
            # diffusers' own cut (StableDiffusionXLPipeline.__call__, step 8.1)
            n_train = scheduler.config.num_train_timesteps
            cutoff = int(round(n_train - end * n_train))
            timesteps = [t for t in timesteps if t >= cutoff]
        return max(len(timesteps), 1)

    def _start_generation(self, x_model: torch.Tensor, arguments: dict) -> GenerationState:
        self.finish_generation()
        pipe = self.pipe
        param = self.plugin.parameterization(pipe)
        b = x_model.shape[0]
        groups_list = self.plugin.cfg_groups(pipe, b) or [[r] for r in range(b)]
        width = max(len(g) for g in groups_list)
        if any(len(g) != width for g in groups_list) or sorted(r for g in groups_list for r in g) != list(range(b)):
            raise ValueError(
                f"plugin {self.plugin.name!r} returned CFG groups {groups_list} that do not partition a batch of {b}"
            )
        row_group = [0] * b
        for gi, g in enumerate(groups_list):
            for r in g:
                row_group[r] = gi
        expected = self._expected_calls(pipe)
        state = GenerationState(
            parameterization=param,
            batch_shape=tuple(x_model.shape),
            groups=torch.tensor(groups_list, dtype=torch.long, device=x_model.device),
            row_group=row_group,
            expected_calls=expected,
            history_len=self.config.history_len,
            consecutive_skips=[0] * len(groups_list),
            last_computed=[True] * len(groups_list),
        )
        grid = self.denoiser.latent_to_grid(x_model[:1].float(), arguments)
        state.latent_grid = (int(grid.shape[-2]), int(grid.shape[-1]))
        self.current.parameterization = param.describe()
        self.current.batch_size = b
        self.current.per_sample_computed = [0] * b
        self.current.per_sample_skipped = [0] * b
        self.current.per_sample_partial = [0] * b
        self.state = state
        return state

    # ------------------------------------------------------------------ decision
    def _eligible_grids(self, state: GenerationState) -> list[tuple[int, int]]:
        if not self.block_tokens or state.latent_grid is None:
            return []
        counts = set(self.block_tokens.values())
        if self.config.token_resolutions == "highest":
            counts = {max(counts)}
        grids = []
        for n in sorted(counts, reverse=True):
            g = tokens.grid_for_tokens(state.latent_grid, n)
            if g is not None:
                grids.append(g)
        return grids

    def _phase(self, state: GenerationState, n: int) -> str:
        """Where call ``n`` sits: warmup, criterion, late (scheduled extrapolation) or final."""
        cfg = self.config
        expected = state.expected_calls
        warmup = cfg.warmup_calls
        if expected is not None:
            warmup = max(warmup, round(cfg.warmup_fraction * expected))
            if n >= expected - cfg.final_calls:
                return "final"
        if n < warmup:
            return "warmup"
        if cfg.skip_steps and cfg.late_phase_start is not None and expected is not None and n >= self._late_index(state):
            return "late"
        return "criterion"

    def _late_index(self, state: GenerationState) -> int:
        return math.ceil(self.config.late_phase_start * state.expected_calls)

    def decide(self, x_model: torch.Tensor, timestep: Any, arguments: dict) -> CallPlan:
        """Decide call ``state.call_index``: which row groups to skip, and the token plan."""
        state = self.state
        if state is None or tuple(x_model.shape) != state.batch_shape:
            state = self._start_generation(x_model, arguments)
        cfg = self.config
        param = state.parameterization
        device = x_model.device
        b, g = state.batch_size, state.num_groups
        lvl = param.level(timestep, device)
        x_flow = to_flow(x_model, lvl)
        t = torch.as_tensor(timestep, device=device).reshape(-1)
        items = [lvl.tau.reshape(1), (t == t[0]).all().to(torch.float32).reshape(1)]
        phase = self._phase(state, state.call_index) if cfg.enabled else "off"
        nodes = state.newest_nodes()
        use_criterion = phase == "criterion" and len(nodes) == 3
        x0_hat = None
        order = cfg.late_phase_order if phase == "late" else cfg.extrapolation_order
        if cfg.skip_steps and phase in ("criterion", "late") and state.values is not None:
            x0_hat = self._extrapolate(state, lvl, x_model, order)
            finite = torch.isfinite(x0_hat.reshape(b, -1)).all(dim=1)
            items.append(finite[state.groups].all(dim=1).to(torch.float32))
        else:
            items.append(torch.zeros(g, device=device))
        grids: list[tuple[int, int]] = []
        pooled: dict = {}
        required: dict = {}
        if use_criterion:
            m = criterion.stability_momentum(
                x_flow, nodes[0].x_flow, [n.drift for n in nodes], [n.tau for n in nodes], lvl.tau
            )
            scores = criterion.group_scores(criterion.sample_scores(m), state.groups)
            items.append((scores <= 0).to(torch.float32))
            grids = self._eligible_grids(state) if cfg.token_sparsity else []
            if grids:
                tok = self.denoiser.latent_to_grid(m, arguments)  # (B, H, W)
                tok = tok[state.groups].mean(dim=1)[torch.tensor(state.row_group, device=device)]
                for grid in grids:
                    p = tokens.pool_scores(tok, grid)
                    anchors = tokens.anchor_mask(grid, cfg.anchor_window, state.call_index, device)
                    pooled[grid], required[grid] = p, tokens.required_mask(p, anchors)
                    items.append(required[grid].sum(dim=1).to(torch.float32))
        host = torch.cat([i.reshape(-1).to(torch.float32) for i in items]).tolist()  # the one host read
        tau_host, uniform_host = host[0], host[1] > 0.5
        finite, stable = host[2 : 2 + g], host[2 + g : 2 + 2 * g]
        full = CallPlan(lvl, x_flow, list(range(g)), [], None, None, tau_host)
        if state.last_tau is not None and tau_host > state.last_tau + _NEW_GENERATION_TOL:
            self._start_generation(x_model, arguments)  # previous generation was interrupted
            return full
        if not uniform_host and cfg.enabled:
            self._note("criterion off: rows of one call had different timesteps")
            return full
        if state.last_tau is not None and abs(tau_host - state.last_tau) <= 1e-7:
            return full  # a solver's second stage at the same noise level (Heun): no step to judge
        skipped = []
        if x0_hat is not None:
            # host-side work per group stays O(rows): this runs on every call, at any batch size
            late_skip = phase == "late" and (
                (state.call_index - self._late_index(state)) % cfg.interval_for(state.expected_calls) != 0
            )
            counts, members = state.value_counts, state.members
            for gi in range(g):
                if finite[gi] < 0.5:
                    self._note("an extrapolated output was not finite; computed instead")
                    continue
                if not all(counts[r] >= order + 1 for r in members[gi]):
                    continue
                if late_skip or (use_criterion and stable[gi] > 0.5
                                 and state.consecutive_skips[gi] < cfg.max_consecutive_skips):
                    skipped.append(gi)
        skipped_set = set(skipped)
        computed = [gi for gi in range(g) if gi not in skipped_set]
        token_plan = None
        if grids and computed and all(state.last_computed[gi] for gi in computed):
            rows_host = state.group_rows(computed)
            offset = 2 + 2 * g
            ks = {}
            for i, grid in enumerate(grids):
                counts = host[offset + i * b : offset + (i + 1) * b]
                k = int(max(counts[r] for r in rows_host))
                if k <= cfg.max_token_fraction * grid[0] * grid[1]:
                    ks[grid] = max(k, 1)
            if ks:
                if len(rows_host) != b:
                    rows = torch.tensor(rows_host, device=device)
                    pooled = {kk: v.index_select(0, rows) for kk, v in pooled.items()}
                    required = {kk: v.index_select(0, rows) for kk, v in required.items()}
                token_plan = TokenPlan(pooled=pooled, required=required, k=ks)
        return CallPlan(lvl, x_flow, computed, skipped, x0_hat, token_plan, tau_host)

    def _note(self, note: str) -> None:
        if note not in self.current.notes:
            self.current.notes.append(note)

    def _take_pending(self, x_model: torch.Tensor) -> CallPlan | None:
        """The plan a control branch decided for this very step, if any (used once)."""
        pending, self._pending = self._pending, None
        if pending is None or self.state is None:
            return None
        plan, call_index, shape = pending
        if call_index != self.state.call_index:
            return None
        if shape != tuple(x_model.shape):
            # the control branch decided rows for another layout: running the denoiser on its own
            # decision would feed it control residuals computed (or zeroed) for other rows
            raise ValueError(
                f"{type(self.pipe).__name__}: the control branch was called with a latent of shape {shape} "
                f"(in the denoiser's batch layout) but the denoiser then got {tuple(x_model.shape)}; the control "
                "input (control image size, batch, guess_mode) must match the denoiser's latent"
            )
        return plan

    @torch.compiler.disable(recursive=False)  # see ``run``: only the branch's own forward is compiled
    def run_control(self, spec: ControlSpec, original_forward: Callable, args: tuple, kwargs: dict) -> Any:
        """Run a control branch for the step the denoiser is about to take.

        The step's decision is made here (the control branch is called first) and handed to
        the denoiser call. Skipped rows are not computed: their control residuals are zeros,
        which the denoiser never reads because it does not run on those rows.
        """
        rows, run_args, run_kwargs, ready = self._prepare_control(spec, args, kwargs)
        if run_args is None:
            return ready
        out = original_forward(*run_args, **run_kwargs)
        return self._finish_control(spec, out, rows, args, kwargs)

    @torch.compiler.disable
    def _prepare_control(self, spec: ControlSpec, args: tuple, kwargs: dict) -> tuple:
        """(rows to run or None for all, the branch's arguments or None, the output when it need not run)."""
        bound = inspect.signature(spec.module.forward).bind(*args, **kwargs)
        sample = bound.arguments[spec.sample_arg]
        timestep = bound.arguments[spec.timestep_arg]
        x_den = spec.to_denoiser_sample(sample, self.pipe, bound.arguments) if spec.to_denoiser_sample else sample
        plan = self.decide(x_den, timestep, bound.arguments)
        self._pending = (plan, self.state.call_index, tuple(x_den.shape))
        computed = set(self.state.group_rows(plan.computed_groups))
        bc, bd = sample.shape[0], x_den.shape[0]
        mapping = spec.control_rows(bc, bd) if spec.control_rows else list(range(bc))
        run_rows = [i for i in range(bc) if mapping[i] in computed]
        if len(run_rows) == bc:
            self.current.control_calls_run += 1
            return None, args, kwargs, None
        template = self._control_template.get(id(spec.module))
        if not run_rows:
            if template is None:  # cannot happen after the always-computed warm-up; be safe
                self.current.control_calls_run += 1
                return None, args, kwargs, None
            return None, None, None, map_tensors(template, torch.zeros_like)
        rows = torch.tensor(run_rows, dtype=torch.long, device=sample.device)
        self.current.control_calls_run += 1
        return rows, select_rows(args, rows, bc), select_rows(kwargs, rows, bc, spec.unbatched_args), None

    @torch.compiler.disable
    def _finish_control(self, spec: ControlSpec, out: Any, rows: torch.Tensor | None, args: tuple, kwargs: dict) -> Any:
        if rows is None:
            self._control_template[id(spec.module)] = out
            return out
        bound = inspect.signature(spec.module.forward).bind(*args, **kwargs)
        return scatter_rows(out, rows, bound.arguments[spec.sample_arg].shape[0])

    def _extrapolate(self, state: GenerationState, lvl: NoiseLevel, x_model: torch.Tensor, order: int) -> torch.Tensor:
        """x0 estimate at the current time from the last ``order + 1`` computed calls of every row."""
        t_eval = lvl.tau.expand(state.batch_size)
        values, times = state.values[: order + 1], state.value_times[: order + 1]
        if self.config.extrapolation == "x0":
            return extrapolate(values, times, t_eval)
        out_hat = extrapolate(values, times, t_eval)
        return state.parameterization.x0_from_output(x_model.float(), out_hat, lvl)

    # ------------------------------------------------------------------ execution
    # Under torch.compile the decision logic must stay out of the compiled graph (as diffusers'
    # FirstBlockCache keeps its check out): ``run`` itself is skipped by dynamo without its
    # callees, everything it calls for bookkeeping is eager, and only the network's own forward
    # (called from ``run``) is compiled, as a frame of its own.
    @torch.compiler.disable(recursive=False)
    def run(self, original_forward: Callable, args: tuple, kwargs: dict) -> Any:
        """Execute one denoiser call under SADA."""
        call = self._prepare_call(original_forward, args, kwargs)
        output = call.output
        if call.run_args is not None:
            try:
                output = original_forward(*call.run_args, **call.run_kwargs)
            finally:
                self._end_network_call()
        return self._finish_call(call, output)

    @torch.compiler.disable
    def _prepare_call(self, original_forward: Callable, args: tuple, kwargs: dict) -> "_Call":
        """Decide the call; the network's arguments (all rows or the computed ones), or its output
        when it had to run here (the once-per-shape FLOP-measured call, eager by design)."""
        bound = self.signature.bind(*args, **kwargs)
        x_model = bound.arguments[self.denoiser.sample_arg]
        timestep = bound.arguments[self.denoiser.timestep_arg]
        started = time.perf_counter()
        plan = self._take_pending(x_model)
        if plan is None:
            plan = self.decide(x_model, timestep, bound.arguments)
        b = x_model.shape[0]
        rows_host = self.state.group_rows(plan.computed_groups)
        rows = torch.tensor(rows_host, dtype=torch.long, device=x_model.device)
        call = _Call(plan, x_model, bound.arguments.get("return_dict", True), rows, rows_host,
                     overhead=time.perf_counter() - started)
        if not rows_host:
            return call
        self.token_plan = plan.token_plan
        self.active_rows = None if len(rows_host) == b else rows
        if len(rows_host) != b:
            call.run_args = select_rows(args, rows, b)
            call.run_kwargs = select_rows(kwargs, rows, b, self.denoiser.unbatched_args)
        elif self._needs_measuring(x_model):
            try:
                call.output = self._forward_measured(original_forward, args, kwargs, x_model)
            finally:
                self._end_network_call()
        else:
            call.run_args, call.run_kwargs = args, kwargs
        return call

    @torch.compiler.disable
    def _end_network_call(self) -> None:
        self.token_plan = None
        self.active_rows = None

    @torch.compiler.disable
    def _finish_call(self, call: "_Call", output: Any) -> Any:
        """Merge extrapolated rows into the output, record the call, return what the pipeline gets."""
        started = time.perf_counter()
        plan, x_model, rows, state = call.plan, call.x_model, call.rows, self.state
        computed_tensor = None
        if call.rows_host:
            computed_tensor = output_tensor(output, self.denoiser.output_field)
            self._last_output = output
        if plan.skipped_groups:
            full = self._approximate(plan, x_model, state)
            if computed_tensor is not None:
                full = full.clone()
                full[rows] = computed_tensor.to(full.dtype)
            final_tensor = full
            output = rebuild_output(self._last_output, full, self.denoiser.output_field)
            if call.return_dict is False and not isinstance(output, tuple):
                output = (full,)
        else:
            final_tensor = computed_tensor
        self._record(plan, x_model, final_tensor, rows, call.rows_host)
        self.current.overhead_seconds += call.overhead + time.perf_counter() - started
        return output

    def _needs_measuring(self, x_model: torch.Tensor) -> bool:
        return (self.config.count_flops and tuple(x_model.shape) not in self._flops_measured
                and self.token_plan is None)

    def _forward_measured(self, original_forward: Callable, args: tuple, kwargs: dict, x_model: torch.Tensor) -> Any:
        """Run the full network; once per input shape, count its FLOPs (and each block's) for the report."""
        key = tuple(x_model.shape)
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        self.flop_counter = counter
        self._measuring_blocks = {}
        try:
            with counter:
                out = original_forward(*args, **kwargs)
        finally:
            self.flop_counter = None
        self._flops_measured[key] = (float(counter.get_total_flops()), dict(self._measuring_blocks))
        return out

    def record_block_flops(self, name: str, flops: float) -> None:
        """A block hook's FLOPs during the measured call (blocks may run several times: summed)."""
        self._measuring_blocks[name] = self._measuring_blocks.get(name, 0.0) + flops

    def _approximate(self, plan: CallPlan, x_model: torch.Tensor, state: GenerationState) -> torch.Tensor:
        out = state.parameterization.output_from_x0(x_model.float(), plan.x0_hat, plan.lvl)
        return out.to(x_model.dtype)

    def _record(self, plan: CallPlan, x_model, output: torch.Tensor, rows: torch.Tensor, rows_host: list[int]) -> None:
        state = self.state
        param = state.parameterization
        lvl = plan.lvl
        out32 = output.float()
        x0 = param.x0_from_output(x_model.float(), out32, lvl)
        drift = flow_drift(plan.x_flow, x0, lvl.tau)
        state.push_node(lvl, plan.x_flow, drift, plan.tau_host)
        if rows_host and self.config.enabled:
            values = x0 if self.config.extrapolation == "x0" else out32
            state.push_values(values, lvl.tau, plan.tau_host, rows_host)
        skipped_rows = state.group_rows(plan.skipped_groups)
        partial = plan.token_plan is not None and bool(rows_host)
        for r in rows_host:
            self.current.per_sample_computed[r] += 1
            if partial:
                self.current.per_sample_partial[r] += 1
        for r in skipped_rows:
            self.current.per_sample_skipped[r] += 1
        for gi in plan.computed_groups:
            state.consecutive_skips[gi] = 0
            state.last_computed[gi] = True
        for gi in plan.skipped_groups:
            state.consecutive_skips[gi] += 1
            state.last_computed[gi] = False
        letter = "S" if not rows_host else ("M" if skipped_rows else ("P" if partial else "F"))
        self.current.decisions += letter
        self.current.denoiser_calls += 1
        self.current.network_calls += 1 if rows_host else 0
        self._account_flops(state, plan, rows_host, skipped_rows)
        state.call_index += 1
        if state.expected_calls is not None and state.call_index >= state.expected_calls:
            self.finish_generation()  # UNets get no reset from diffusers: free caches here

    def _account_flops(self, state, plan: CallPlan, rows_host: list[int], skipped_rows: list[int]) -> None:
        measured = self._flops_measured.get(state.batch_shape)
        if measured is None:
            return
        total, _ = measured
        self.current.flops_per_call = total
        b = state.batch_size
        self.current.flops_saved += total * len(skipped_rows) / b

    def account_block(self, name: str, n_tokens: int, k_tokens: int, rows: int, module_flops: float | None) -> None:
        """Token and FLOP bookkeeping from a block hook (called on every block forward)."""
        self.current.tokens_total += n_tokens * rows
        self.current.tokens_computed += k_tokens * rows
        if module_flops is not None and n_tokens:
            b = self.state.batch_size if self.state is not None else rows
            self.current.flops_saved += module_flops * (1.0 - k_tokens / n_tokens) * rows / b

    def block_flops(self, name: str) -> float | None:
        """FLOPs of one full forward of a named block (full batch), from the measured call."""
        if self.state is None:
            return None
        measured = self._flops_measured.get(self.state.batch_shape)
        if measured is None:
            return None
        return measured[1].get(name) or None
