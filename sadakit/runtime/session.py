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
from ..spec import ControlSpec, DenoiserSpec, TokenBlockSpec
from .batching import map_tensors, output_tensor, rebuild_output, scatter_rows, select_rows
from .report import GenerationReport
from .state import GenerationState

_NEW_GENERATION_TOL = 1e-6


@dataclass
class TokenPlan:
    """Which tokens each block recomputes on a partial call (indices built lazily per grid)."""

    pooled: dict[tuple[int, ...], torch.Tensor]  # grid -> (B_active, N) scores
    required: dict[tuple[int, ...], torch.Tensor]  # grid -> (B_active, N) bool
    k: dict[tuple[int, ...], int]  # grid -> tokens per row, only grids worth pruning
    _indices: dict = field(default_factory=dict)

    def subset(self, positions: list[int]) -> "TokenPlan":
        """The plan for some of its rows (one call stream's rows of a step)."""
        if positions == list(range(next(iter(self.pooled.values())).shape[0])):
            return self
        index = torch.tensor(positions, device=next(iter(self.pooled.values())).device)
        return TokenPlan({g: v.index_select(0, index) for g, v in self.pooled.items()},
                         {g: v.index_select(0, index) for g, v in self.required.items()}, dict(self.k))

    def indices(self, grid: tuple[int, ...]) -> torch.Tensor | None:
        if grid not in self.k:
            return None
        if grid not in self._indices:
            self._indices[grid] = tokens.select_indices(self.pooled[grid], self.required[grid], self.k[grid])
        return self._indices[grid]

    def shared_indices(self, grid: tuple[int, ...]) -> torch.Tensor | None:
        """(k,) one sorted index set for every row: the union of the rows' required tokens.

        For blocks whose per-token arguments have no batch dimension (rotary tables).
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

    plan: CallPlan | None  # None: run in full without a decision
    x_model: torch.Tensor
    return_dict: Any
    rows: torch.Tensor | None  # the call's own rows to compute
    rows_host: list[int]
    overhead: float
    stream: str | None = None
    offset: int = 0  # where the call's rows sit among the step's rows (streams side by side)
    stream_order: int | None = None  # set while the first step's streams are being learned
    run_args: tuple | None = None
    run_kwargs: dict | None = None
    output: Any = None


@dataclass
class StreamLayout:
    """The denoiser calls of one solver step: one per call stream (CFG branch), in call order.

    A step's rows are the streams' rows side by side (stream i's row r is row ``i * batch + r``),
    so the decision, history and extrapolation of a step treat its streams as one batch.
    """

    names: list  # stream names in call order; [None] when the pipeline names none
    batch: int  # rows per call

    @property
    def size(self) -> int:
        return len(self.names)

    def offset(self, name: str | None) -> int:
        return self.names.index(name) * self.batch


@dataclass
class StepCalls:
    """The calls of the current step so far: its decision and each stream's input and output."""

    plan: CallPlan | None
    x: dict = field(default_factory=dict)
    out: dict = field(default_factory=dict)
    timestep: Any = None
    arguments: dict | None = None


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
        self._block_layouts = {b.name: b.layout for b in token_blocks}
        self.active_rows_host: list[int] | None = None
        self.token_plan_used = False
        self._call_shape: tuple | None = None
        # call streams of the current generation (see StreamLayout)
        self.layout: StreamLayout | None = None
        self.step: StepCalls | None = None
        self._streams_off: str | None = None

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
        self.layout = None
        self.step = None
        self._streams_off = None

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

    def _start_generation(self, x_model: torch.Tensor, arguments: dict, fresh: bool = True) -> GenerationState:
        """A new state for a step batch shaped like ``x_model``; ``fresh=False`` keeps the report
        and caches of the calls already made (the first step, while call streams were learned)."""
        if fresh:
            layout = self.layout
            self.finish_generation()
            self.layout = layout
        pipe = self.pipe
        param = self.plugin.parameterization(pipe)
        b = x_model.shape[0]
        streams = self.layout.size if self.layout is not None else 1
        per_call = b // streams
        call_groups = self.plugin.cfg_groups(pipe, per_call) or [[r] for r in range(per_call)]
        width = max(len(g) for g in call_groups)
        if any(len(g) != width for g in call_groups) or sorted(r for g in call_groups for r in g) != list(range(per_call)):
            raise ValueError(
                f"plugin {self.plugin.name!r} returned CFG groups {call_groups} that do not partition a batch of {per_call}"
            )
        # the same rows of every call stream (the CFG branches of one prompt) decide together
        groups_list = [[i * per_call + r for i in range(streams) for r in g] for g in call_groups]
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
        state.latent_grid = tuple(int(a) for a in grid.shape[1:])
        self.current.parameterization = param.describe()
        self.current.batch_size = b
        for counts in (self.current.per_sample_computed, self.current.per_sample_skipped,
                       self.current.per_sample_partial):
            counts.extend([0] * (b - len(counts)))
        self.state = state
        return state

    # ------------------------------------------------------------------ decision
    def _eligible_grids(self, state: GenerationState) -> list[tuple[int, ...]]:
        """The token grids of the blocks seen so far; blocks whose token count matches no grid
        of the latent are named in the report (they always run in full)."""
        if state.latent_grid is None:
            return []
        if not self.block_tokens:
            if not self.token_blocks:
                self._note("token sparsity inactive: the plugin names no eligible block")
            return []
        by_grid: dict[tuple[int, ...], int] = {}
        unmatched = []
        for name, n in self.block_tokens.items():
            g = self._block_grid(name, n, state.latent_grid)
            if g is None:
                unmatched.append(f"{name} ({n} tokens)")
            else:
                by_grid[g] = n
        if unmatched:
            shown = ", ".join(unmatched[:3]) + (f" and {len(unmatched) - 3} more" if len(unmatched) > 3 else "")
            self._note(f"token sparsity inactive in block(s) {shown}: their token count matches no "
                       f"grid of the latent's token grid {state.latent_grid} (layouts: see TokenBlockSpec.layout)")
        grids = sorted(by_grid, key=lambda g: -by_grid[g])
        if self.config.token_resolutions == "highest":
            grids = grids[:1]
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
                if k <= cfg.max_token_fraction * math.prod(grid):
                    ks[grid] = max(k, 1)
            if not ks:
                self._note(f"token sparsity inactive on some calls: more than {cfg.max_token_fraction:.0%} of the "
                           "tokens were unstable (SADAConfig.max_token_fraction)")
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
    def run(self, original_forward: Callable, args: tuple, kwargs: dict, context: str | None = None) -> Any:
        """Execute one denoiser call under SADA; ``context`` is diffusers' cache-context name."""
        call = self._prepare_call(original_forward, args, kwargs, context)
        output = call.output
        if call.run_args is not None:
            try:
                output = original_forward(*call.run_args, **call.run_kwargs)
            finally:
                self._end_network_call()
        return self._finish_call(call, output)

    @torch.compiler.disable
    def _prepare_call(self, original_forward: Callable, args: tuple, kwargs: dict, context: str | None = None) -> "_Call":
        """Decide the call; the network's arguments (all rows or the computed ones), or its output
        when it had to run here (the once-per-shape FLOP-measured call, eager by design)."""
        bound = self.signature.bind(*args, **kwargs)
        x_model = bound.arguments[self.denoiser.sample_arg]
        timestep = bound.arguments[self.denoiser.timestep_arg]
        started = time.perf_counter()
        stream = context
        if stream is None and self.denoiser.call_stream is not None:
            stream = self.denoiser.call_stream(bound.arguments)
        if self.controls:
            stream = None  # a control branch decides each step for the one denoiser call after it
        b = x_model.shape[0]
        call = _Call(None, x_model, bound.arguments.get("return_dict", True), None, list(range(b)),
                     overhead=0.0, stream=stream, offset=0)
        plan = self._plan_for_stream(call, x_model, timestep, bound.arguments)
        call.plan = plan
        if plan is not None:
            offset, state = call.offset, self.state
            virtual = state.group_rows(plan.computed_groups)
            positions = [i for i, r in enumerate(virtual) if offset <= r < offset + b]
            call.rows_host = [virtual[i] - offset for i in positions]
            call.rows = torch.tensor(call.rows_host, dtype=torch.long, device=x_model.device)
            self.token_plan = None
            if plan.token_plan is not None and call.rows_host:
                self.token_plan = plan.token_plan.subset(positions)
            full_batch = len(call.rows_host) == b and state.batch_size == b
            self.active_rows = None if full_batch else call.rows + offset
            self.active_rows_host = None if full_batch else [r + offset for r in call.rows_host]
        else:  # discovery of the streams, or SADA off for this generation: the call runs in full
            self.token_plan = None
            self.active_rows = self.active_rows_host = None
            if call.stream_order is not None and self.layout is None:
                self.active_rows_host = list(range(call.stream_order * b, (call.stream_order + 1) * b))
                self.active_rows = torch.tensor(self.active_rows_host, device=x_model.device)
        call.overhead = time.perf_counter() - started
        self._call_shape = tuple(x_model.shape)
        rows_host = call.rows_host
        if not rows_host:
            return call
        if len(rows_host) != b:
            call.run_args = select_rows(args, call.rows, b)
            call.run_kwargs = select_rows(kwargs, call.rows, b, self.denoiser.unbatched_args)
        elif self._needs_measuring(x_model):
            try:
                call.output = self._forward_measured(original_forward, args, kwargs, x_model)
            finally:
                self._end_network_call()
        else:
            call.run_args, call.run_kwargs = args, kwargs
        return call

    def _plan_for_stream(self, call: "_Call", x_model: torch.Tensor, timestep: Any, arguments: dict) -> CallPlan | None:
        """The decision covering this call: made at the first stream's call of each step for
        every stream (CFG branches of one prompt skip together), reused by the others. None:
        run in full without a decision (the first step, while the streams are being learned,
        or a generation whose calls stopped following the learned pattern)."""
        if self._streams_off is not None:
            return None
        stream, b = call.stream, x_model.shape[0]
        if self.layout is None:
            if stream is None:
                self.layout = StreamLayout([None], b)
            else:
                step = self.step
                if step is None:
                    if self.state is not None or self.current.denoiser_calls:
                        self.finish_generation()
                    step = self.step = StepCalls(None, timestep=timestep, arguments=arguments)
                if stream not in step.x:
                    first = next(iter(step.x.values()), None)
                    if first is not None and tuple(first.shape) != tuple(x_model.shape):
                        self._stop_streams(f"the call streams {list(step.x) + [stream]} have different latent "
                                           "shapes; SADA computed every call of this generation")
                        return None
                    call.stream_order = len(step.x)
                    step.x[stream] = x_model
                    return None
                if stream != next(iter(step.x)):
                    self._stop_streams(f"call stream {stream!r} came twice before {next(iter(step.x))!r} in the first "
                                       "step; SADA computed every call of this generation")
                    return None
                self.layout = StreamLayout(list(step.x), b)
                self._record_first_step()
        layout = self.layout
        if layout.names == [None] and stream is None and b != layout.batch:
            layout.batch = b  # one call per step: a new batch size is a new generation (decide starts it)
        if stream not in layout.names or b != layout.batch:
            self._stop_streams(f"a denoiser call of stream {stream!r} with batch {b} does not fit the streams "
                               f"{layout.names} (batch {layout.batch}) of this generation; SADA computed every call "
                               "from there on")
            return None
        call.offset = layout.offset(stream)
        if stream == layout.names[0]:
            step = self.step
            if layout.size > 1 and step is not None and step.plan is not None and len(step.out) < layout.size:
                missing = [n for n in layout.names if n not in step.out]
                self._stop_streams(f"step {self.state.call_index} had no call of stream(s) {missing}; SADA computed "
                                   "every call from there on")
                return None
            plan = self._take_pending(x_model) if layout.size == 1 else None
            if plan is None:
                virtual = x_model if layout.size == 1 else x_model.repeat(layout.size, *([1] * (x_model.dim() - 1)))
                plan = self.decide(virtual, timestep, arguments)
            self.step = StepCalls(plan)
            return plan
        step = self.step
        expected = layout.names[len(step.out)] if step is not None and step.plan is not None and len(step.out) < layout.size else None
        if stream != expected:
            self._stop_streams(f"call stream {stream!r} came out of the order {layout.names} of the first step; SADA "
                               "computed every call from there on")
            return None
        return step.plan

    def _stop_streams(self, reason: str) -> None:
        self._streams_off = reason
        self._note(reason)
        self.step = None

    def _record_first_step(self) -> None:
        """The streams are known: record the first step (all computed) as one call of all of them."""
        step = self.step
        names = self.layout.names
        x_all = torch.cat([step.x[n] for n in names])
        self._start_generation(x_all, step.arguments, fresh=False)
        plan = self.decide(x_all, step.timestep, step.arguments)
        if plan.skipped_groups:  # cannot happen: the first call of a generation is always computed
            raise RuntimeError("sadakit: the first step of a generation was not computed")
        self._record_step(plan, x_all, torch.cat([step.out[n] for n in names]))
        self.step = None

    @torch.compiler.disable
    def _end_network_call(self) -> None:
        self.token_plan = None
        self.active_rows = None
        self.active_rows_host = None

    @torch.compiler.disable
    def _finish_call(self, call: "_Call", output: Any) -> Any:
        """Merge extrapolated rows into the output, record the call, return what the pipeline gets."""
        started = time.perf_counter()
        plan, x_model, rows = call.plan, call.x_model, call.rows
        b = x_model.shape[0]
        computed_tensor = None
        if call.rows_host:
            computed_tensor = output_tensor(output, self.denoiser.output_field)
            self._last_output = output
        skipped_local = b - len(call.rows_host)
        if plan is not None and skipped_local:
            full = self._approximate(plan, x_model, call.offset)
            if computed_tensor is not None:
                full = full.clone()
                full[rows] = computed_tensor.to(full.dtype)
            final_tensor = full
            output = rebuild_output(self._last_output, full, self.denoiser.output_field)
            if call.return_dict is False and not isinstance(output, tuple):
                output = (full,)
        else:
            final_tensor = computed_tensor
        self._account_call(call, skipped_local)
        if plan is not None:
            if self.layout.size == 1:
                self._record_step(plan, x_model, final_tensor)
            else:
                step = self.step
                step.x[call.stream], step.out[call.stream] = x_model, final_tensor
                if len(step.out) == self.layout.size:
                    names = self.layout.names
                    self._record_step(plan, torch.cat([step.x[n] for n in names]),
                                      torch.cat([step.out[n] for n in names]))
        elif call.stream_order is not None and self.step is not None and self.layout is None:
            self.step.out[call.stream] = final_tensor  # the first step, while the streams are learned
        self.current.overhead_seconds += call.overhead + time.perf_counter() - started
        return output

    def _account_call(self, call: "_Call", skipped_local: int) -> None:
        """The report's view of one denoiser call: its rows, letter and saved FLOPs."""
        report = self.current
        b = call.x_model.shape[0]
        first = call.offset if call.stream_order is None else call.stream_order * b
        if call.plan is None and call.stream_order is None:
            first = 0  # SADA off for this generation: rows of the call itself
        for counts in (report.per_sample_computed, report.per_sample_skipped, report.per_sample_partial):
            if len(counts) < first + b:
                counts.extend([0] * (first + b - len(counts)))
        report.batch_size = max(report.batch_size, len(report.per_sample_computed))
        partial = self.token_plan_used and bool(call.rows_host)
        computed = set(call.rows_host)
        for r in range(b):
            if r in computed:
                report.per_sample_computed[first + r] += 1
                report.per_sample_partial[first + r] += int(partial)
            else:
                report.per_sample_skipped[first + r] += 1
        letter = "S" if not call.rows_host else ("M" if skipped_local else ("P" if partial else "F"))
        report.decisions += letter
        report.denoiser_calls += 1
        report.network_calls += 1 if call.rows_host else 0
        if call.stream is not None and call.stream not in report.streams:
            report.streams.append(call.stream)
        measured = self._flops_measured.get(tuple(call.x_model.shape))
        if measured is not None:
            report.flops_per_call = measured[0]
            report.flops_saved += measured[0] * skipped_local / b
        self.token_plan_used = False

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

    def _approximate(self, plan: CallPlan, x_model: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """The outputs the extrapolated x0 implies for this call's rows (rows ``offset`` on of the step)."""
        x0_hat = plan.x0_hat[offset: offset + x_model.shape[0]]
        out = self.state.parameterization.output_from_x0(x_model.float(), x0_hat, plan.lvl)
        return out.to(x_model.dtype)

    def _record_step(self, plan: CallPlan, x_model: torch.Tensor, output: torch.Tensor) -> None:
        """Advance the trajectory by one step (every stream's rows): drift history, extrapolation
        values of the computed rows, per-group guard rails, the call index."""
        state = self.state
        param = state.parameterization
        lvl = plan.lvl
        rows_host = state.group_rows(plan.computed_groups)
        out32 = output.float()
        x0 = param.x0_from_output(x_model.float(), out32, lvl)
        drift = flow_drift(plan.x_flow, x0, lvl.tau)
        state.push_node(lvl, plan.x_flow, drift, plan.tau_host)
        if rows_host and self.config.enabled:
            values = x0 if self.config.extrapolation == "x0" else out32
            state.push_values(values, lvl.tau, plan.tau_host, rows_host)
        for gi in plan.computed_groups:
            state.consecutive_skips[gi] = 0
            state.last_computed[gi] = True
        for gi in plan.skipped_groups:
            state.consecutive_skips[gi] += 1
            state.last_computed[gi] = False
        state.call_index += 1
        if state.expected_calls is not None and state.call_index >= state.expected_calls:
            self.finish_generation()  # UNets get no reset from diffusers: free caches here

    def account_block(self, name: str, n_tokens: int, k_tokens: int, rows: int, module_flops: float | None) -> None:
        """Token and FLOP bookkeeping of one block forward."""
        self.current.tokens_total += n_tokens * rows
        self.current.tokens_computed += k_tokens * rows
        if module_flops is not None and n_tokens:
            b = self._call_shape[0] if self._call_shape else rows
            self.current.flops_saved += module_flops * (1.0 - k_tokens / n_tokens) * rows / b

    def block_flops(self, name: str) -> float | None:
        """FLOPs of one full forward of a named block in a full call of this call's shape."""
        measured = self._flops_measured.get(self._call_shape) if self._call_shape else None
        if measured is None:
            return None
        return measured[1].get(name) or None

    # ------------------------------------------------------------------ token blocks
    # Called by ``hooks.TokenBlockHook`` from inside the (possibly compiled) network forward;
    # each is eager, so the plan's objects never reach a compiled graph.
    @torch.compiler.disable
    def block_selection(self, name: str, n_tokens: int, shared: bool) -> torch.Tensor | None:
        """The tokens block ``name`` computes on this call: (B, k), or (k,) for every row when
        ``shared`` (a per-token argument without rows); None to run the block in full."""
        plan, state = self.token_plan, self.state
        if plan is None or state is None or state.latent_grid is None:
            return None
        cache = self.block_caches.get(name)
        if cache is None or cache.shape[0] != state.batch_size or cache.shape[1] != n_tokens:
            return None
        grid = self._block_grid(name, n_tokens, state.latent_grid)
        if grid is None:
            return None
        idx = plan.shared_indices(grid) if shared else plan.indices(grid)
        if idx is not None:
            self.token_plan_used = True
        return idx

    def _block_grid(self, name: str, n_tokens: int, latent_grid: tuple[int, ...]) -> tuple[int, ...] | None:
        levels = 0 if self._block_layouts.get(name) == "exact" else 6
        return tokens.grid_for_tokens(latent_grid, n_tokens, max_levels=levels)

    @torch.compiler.disable
    def block_flops_before(self) -> float:
        counter = self.flop_counter
        return counter.get_total_flops() if counter is not None else 0

    @torch.compiler.disable
    def block_computed(self, name: str, hidden: torch.Tensor, out: torch.Tensor, flops_before: float) -> None:
        """Bookkeeping of a full block forward: its FLOPs (measured call), token count, residual cache."""
        n = hidden.shape[1]
        counter = self.flop_counter
        if counter is not None:
            self.record_block_flops(name, float(counter.get_total_flops() - flops_before))
        self.block_tokens[name] = n
        if self.config.token_sparsity:
            self._store_residual(name, (out - hidden).detach())
        self.account_block(name, n, n, hidden.shape[0], None)

    def _store_residual(self, name: str, residual: torch.Tensor) -> None:
        """Keep each computed row's residual, at its row of the step (streams side by side)."""
        rows = self.active_rows
        if rows is None:
            self.block_caches[name] = residual
            return
        cache = self.block_caches.get(name)
        rows_host = self.active_rows_host
        if cache is None or cache.shape[1:] != residual.shape[1:]:
            if rows_host != list(range(len(rows_host))):
                return  # no cache for the rows before these yet: the next full call creates it
            self.block_caches[name] = residual
            return
        if cache.shape[0] <= rows_host[-1]:
            if rows_host != list(range(cache.shape[0], cache.shape[0] + len(rows_host))):
                return
            self.block_caches[name] = torch.cat([cache, residual])  # the next stream of the first step
            return
        cache.index_copy_(0, rows, residual.to(cache.dtype))

    @torch.compiler.disable
    def block_merged(self, name: str, hidden: torch.Tensor, idx: torch.Tensor, h_sel: torch.Tensor,
                     out_sel: torch.Tensor) -> torch.Tensor:
        """The block's output on every token: computed ones from ``out_sel``, the others
        input + cached residual; the cache takes the new residuals."""
        rows = self.active_rows
        cache = self.block_caches[name]
        residual = cache if rows is None else cache.index_select(0, rows)
        delta = (out_sel - h_sel).to(residual.dtype)
        if idx.dim() == 1:
            residual = residual.index_copy(1, idx, delta)
        else:
            residual = residual.scatter(1, idx.unsqueeze(-1).expand(-1, -1, residual.shape[-1]), delta)
        out = hidden + residual.to(hidden.dtype)
        if rows is None:
            self.block_caches[name] = residual
        else:
            cache.index_copy_(0, rows, residual)
        n = hidden.shape[1]
        self.account_block(name, n, idx.shape[-1], hidden.shape[0], self.block_flops(name))
        return out
