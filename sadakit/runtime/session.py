"""The SADA runtime bound to one pipeline: runs every denoiser call under a decision.

The parts, one job each: :mod:`.decision` decides a step from the generation's state (one
named host read per call), :mod:`.streams` lays out the calls of a step when a pipeline calls
the denoiser once per CFG branch, :mod:`.token_cache` serves partial block calls,
:mod:`.accounting` keeps the report. This module wires them to the network calls: it runs the
rows that must be computed (fully or on a token subset), gives skipped rows the extrapolated
output, and records the step.
"""

from __future__ import annotations

import dataclasses
import inspect
import time
import weakref
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..config import TOKEN_BUCKETS, SADAConfig
from ..core.parameterization import flow_drift, to_flow
from ..spec import ControlSpec, DenoiserSpec, TokenBlockSpec
from .accounting import Accounting
from .batching import output_tensor, rebuild_output, scatter_rows, select_rows
from .decision import Decider
from .experts import ExpertTracker, component_name
from .entry import NetworkDoor, Serve, ensure_doors
from .host_read import DeviceTimer, to_host, voting, waited_seconds
from .learned import learned_about
from .parallel import context_parallel_group
from .plans import CallPlan
from .report import GenerationReport
from .samplers import unjudgeable_sampler
from .state import GenerationState
from .streams import StepCalls, StreamLayout
from .token_cache import TokenCache


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
    forward: Callable | None = None  # the network's call (compiled or eager) for run_args
    expert: int = 0  # the module called, among DenoiserSpec.modules


class SADASession:
    """Runtime state of one accelerated pipeline, and the path of each denoiser call."""

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
        self.signatures = [inspect.signature(module.forward) for module in denoiser.modules]
        learned = learned_about(denoiser.modules, plugin.family, [b.name for b in token_blocks])
        self.accounting = Accounting(plugin.family, learned.flops)
        self.experts = ExpertTracker(
            [component_name(pipe, m, f"expert{i}") for i, m in enumerate(denoiser.modules)],
            [{b.name for b in token_blocks if _contains(m, b.module)} for m in denoiser.modules],
            self._note,
        )
        self.decider = Decider(config, denoiser.latent_to_grid, self._note)
        self.tokens = TokenCache(token_blocks, config.prunes_tokens, config.token_resolutions == "highest",
                                 self.accounting.account_block,
                                 self.accounting.block_flops, tokens_by_shape=learned.tokens)
        self.state: GenerationState | None = None
        self._last_output: Any = None
        self._pending: tuple | None = None
        self._control_template: dict[int, Any] = {}
        # call streams of the current generation (see .streams)
        self.layout: StreamLayout | None = None
        self.step: StepCalls | None = None
        self._streams_off: str | None = None
        # pipeline calls, as the pipeline's progress bar reports them (see .marker)
        self.marked = False  # the pipeline reports them; otherwise every denoiser call is served
        self._in_pipeline_call = 0
        self.marker_previous: Any = None
        # the eager doors in front of the denoiser and control branches (see .entry)
        self.network_open = False  # a door is running the network: the hooks inside pass through
        self.doors: dict[int, NetworkDoor] = {}
        self.door_keepers: list[tuple[torch.nn.Module, Serve]] = []
        self.device_timer = DeviceTimer()  # sadakit's own kernel time, on CUDA
        self.context_group: Any = None  # the context-parallel process group, if any (see .parallel)

    # ------------------------------------------------------------------ lifecycle
    @property
    def pipe(self) -> Any:
        return self._pipe_ref()

    @property
    def current(self) -> GenerationReport:
        return self.accounting.current

    def finish_generation(self) -> None:
        """Called by diffusers at the end of every pipeline call (and on a new generation)."""
        cache_bytes = None if self.state is None else self.state.cache_bytes() + self.tokens.nbytes()
        device_seconds = self.device_timer.total_seconds()
        if device_seconds is not None:
            self.current.device_overhead_seconds = device_seconds
        self.accounting.finish(cache_bytes)
        self.state = None
        self.tokens.clear()
        self._last_output = None
        self._pending = None
        self._control_template.clear()
        self.layout = None
        self.step = None
        self._streams_off = None
        self.experts.reset()

    def report(self) -> GenerationReport | None:
        return self.accounting.report()

    def begin_generation(self) -> None:
        """The pipeline starts its denoising loop: whatever the last one left behind is over."""
        self.finish_generation()
        self.check_doors()

    def check_doors(self) -> None:
        """Keep a door in front of each hooked network (a compile after ``accelerate`` moves it)."""
        pipe = self.pipe
        for module, serve in self.door_keepers:
            ensure_doors(self.doors, pipe, module, serve, self)

    def enter_pipeline_call(self) -> None:
        self._in_pipeline_call += 1

    def exit_pipeline_call(self) -> None:
        self._in_pipeline_call = max(self._in_pipeline_call - 1, 0)

    def serving(self) -> bool:
        """Whether a denoiser call now belongs to this pipeline's generation (not to a
        ``from_pipe`` sibling sharing the module, nor to a direct call of it)."""
        return not self.marked or self._in_pipeline_call > 0

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
        state = GenerationState(
            streams=streams,
            parameterization=param,
            batch_shape=tuple(x_model.shape),
            groups=torch.tensor(groups_list, dtype=torch.long, device=x_model.device),
            row_group=row_group,
            expected_calls=self._expected_calls(pipe),
            history_len=self.config.history_len,
            consecutive_skips=[0] * len(groups_list),
            last_computed=[True] * len(groups_list),
        )
        grid = self.denoiser.latent_to_grid(x_model[:1].float(), arguments)
        state.latent_grid = tuple(int(a) for a in grid.shape[1:])
        reason = unjudgeable_sampler(getattr(pipe, "scheduler", None))
        if reason is not None and self.config.enabled:
            state.judged = False
            self._note(reason)
        self.tokens.latent_grid, self.tokens.step_rows = state.latent_grid, b
        if self.config.token_sparsity and self.config.budget_planned and self.token_blocks:
            self._note("token sparsity off under SADAConfig.budget: a budget plan computes whole calls or none")
        self._find_context_group()
        if self.context_group is not None and self.config.enabled:
            import torch.distributed as dist

            ranks = dist.get_world_size(self.context_group)
            self._note(f"context parallelism over {ranks} ranks: one decision for all of them (the stability vote "
                       "reduced across the ranks, one all-reduce per call); token sparsity off (each rank holds a "
                       "shard of the tokens)")
        self.current.parameterization = param.describe()
        self.accounting.grow_rows(b)
        self.state = state
        return state

    def _find_context_group(self) -> None:
        """Under context parallelism every rank holds a shard of the tokens: one vote for all
        ranks, and no token sparsity (asked before the first call of a generation runs, since
        the calls that learn the call streams run the token blocks too)."""
        self.context_group = context_parallel_group(self.denoiser.module)
        self.tokens.active = self.context_group is None

    def decide(self, x_model: torch.Tensor, timestep: Any, arguments: dict) -> CallPlan:
        """Decide the step whose rows (every stream's) ``x_model`` holds."""
        state = self.state
        if state is None or tuple(x_model.shape) != state.batch_shape:
            state = self._start_generation(x_model, arguments)
        self.tokens.use_shape(x_model.shape)
        with voting(self.context_group):
            decision = self.decider.decide(
                state, x_model, timestep, arguments,
                lambda: self.tokens.eligible_grids(state.latent_grid, self.config.token_resolutions == "highest",
                                                   self._note) if self.tokens.active else [],
            )
        if decision.new_generation:
            self._start_generation(x_model, arguments)
        plan = decision.plan
        if self.config.static_shapes:
            plan = _with_static_shapes(plan)
        return plan

    def _note(self, note: str) -> None:
        self.accounting.note(note)

    # ------------------------------------------------------------------ control branches
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
            # the denoiser does not run this step at all, so nothing reads the branch's output:
            # hand back the last one rather than allocating zeros of its size
            return None, None, None, template
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

    # ------------------------------------------------------------------ execution
    # Under torch.compile the decision logic stays out of the compiled graph (as diffusers'
    # FirstBlockCache keeps its check out). Normally ``run`` is called by the door in front of
    # the network (.entry), eagerly, and ``network`` is the module's (compiled) call; the
    # token-block hooks inside only do tensor work on jobs prepared here. Reached from inside a
    # forward instead (no door), ``run`` is skipped by dynamo without its callees.
    @torch.compiler.disable(recursive=False)
    def run(self, network: Callable, args: tuple, kwargs: dict, context: str | None = None,
            eager: Callable | None = None, expert: int = 0) -> Any:
        """Execute one denoiser call under SADA; ``context`` is diffusers' cache-context name,
        ``eager`` the network's uncompiled call (for a shape's first, measured call), ``expert``
        the index of the module called among :attr:`DenoiserSpec.modules`."""
        call = self._prepare_call(network, eager or network, args, kwargs, context, expert)
        output = call.output
        if call.run_args is not None:
            try:
                output = call.forward(*call.run_args, **call.run_kwargs)
            finally:
                self._end_network_call()
        return self._finish_call(call, output)

    @torch.compiler.disable
    def _prepare_call(self, network: Callable, eager: Callable, args: tuple, kwargs: dict,
                      context: str | None = None, expert: int = 0) -> "_Call":
        """Decide the call; the network's arguments (all rows or the computed ones) and the
        blocks' jobs, or its output when it had to run here (the once-per-shape FLOP-measured
        call, eager by design)."""
        bound = self.signatures[expert].bind(*args, **kwargs)
        x_model = self.denoiser.noisy_sample(bound.arguments[self.denoiser.sample_arg])
        self.experts.enter(expert, self.state, self.tokens.caches)
        if self.state is None and self.layout is None:
            self._find_context_group()  # a generation's first call
        self.tokens.expert = self.accounting.expert = expert
        timestep = bound.arguments[self.denoiser.timestep_arg]
        started, waited = time.perf_counter(), waited_seconds()
        self.device_timer.start(x_model.device)
        stream = context
        if stream is None and self.denoiser.call_stream is not None:
            stream = self.denoiser.call_stream(bound.arguments)
        if self.controls:
            stream = None  # a control branch decides each step for the one denoiser call after it
        b = x_model.shape[0]
        call = _Call(None, x_model, bound.arguments.get("return_dict", True), None, list(range(b)),
                     overhead=0.0, stream=stream, offset=0, expert=expert)
        call.plan = plan = self._plan_for_stream(call, x_model, timestep, bound.arguments)
        token_plan, step_rows, step_rows_tensor, record = None, None, None, True
        if plan is not None:
            offset, state = call.offset, self.state
            virtual = state.group_rows(plan.computed_groups)
            positions = [i for i, r in enumerate(virtual) if offset <= r < offset + b]
            call.rows_host = [virtual[i] - offset for i in positions]
            if len(call.rows_host) != b:
                call.rows = state.index(call.rows_host)
            stream_index = offset // b
            token_plan = (plan.token_plan.subset(positions, stream_index)
                          if plan.token_plan is not None and positions else None)
            full_batch = len(call.rows_host) == b and state.batch_size == b
            step_rows = None if full_batch else [r + offset for r in call.rows_host]
            step_rows_tensor = None if step_rows is None else state.index(step_rows)
        elif call.stream_order is not None and self.layout is None:  # the first step's streams
            step_rows = list(range(call.stream_order * b, (call.stream_order + 1) * b))
            step_rows_tensor = torch.tensor(step_rows, dtype=torch.long, device=x_model.device)
        else:  # SADA off for this generation: the call runs in full, nothing kept for pruning
            record = False
        self.accounting.call_shape = tuple(x_model.shape)
        if call.rows_host:
            full_rows = len(call.rows_host) == b
            measure = full_rows and self.accounting.needs_measuring(
                self.config.count_flops and token_plan is None, x_model.shape)
            tokens = self.tokens
            tokens.begin_call(token_plan, step_rows, step_rows_tensor, x_model.shape, record, learn=measure)
            call.forward = eager if tokens.learning else network
            if not full_rows:
                call.run_args = select_rows(args, call.rows, b)
                call.run_kwargs = select_rows(kwargs, call.rows, b, self.denoiser.unbatched_args)
            elif measure:
                call.overhead = self._host_seconds(started, waited, x_model)
                try:
                    call.output = self.accounting.forward_measured(eager, args, kwargs, x_model.shape)
                finally:
                    self._end_network_call()
                return call
            else:
                call.run_args, call.run_kwargs = args, kwargs
        call.overhead = self._host_seconds(started, waited, x_model)
        return call

    def _host_seconds(self, started: float, waited: float, x_model: torch.Tensor) -> float:
        """sadakit's host time since ``started``, without the time its read waited for the device."""
        self.device_timer.stop(x_model.device)
        return time.perf_counter() - started - (waited_seconds() - waited)

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
                    # this call's one host read: the step's noise level, for recording it later
                    level = self.plugin.parameterization(self.pipe).level(timestep, x_model.device)
                    step.tau_host = to_host(level.tau.reshape(1).float())[0]
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
        if step is None or stream != step.next_stream(layout):
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
        state = self._start_generation(x_all, step.arguments, fresh=False)
        # every row computed; the noise level was read at the step's first call, so recording
        # the step costs no host read of its own
        lvl = state.parameterization.level(step.timestep, x_all.device)
        plan = CallPlan(lvl, to_flow(x_all, lvl), list(range(state.num_groups)), [], None, None, step.tau_host)
        self._record_step(plan, x_all, torch.cat([step.out[n] for n in names]))
        self.step = None

    @torch.compiler.disable
    def _end_network_call(self) -> None:
        self.tokens.end_call()

    @torch.compiler.disable
    def _finish_call(self, call: "_Call", output: Any) -> Any:
        """Merge extrapolated rows into the output, record the call, return what the pipeline gets."""
        started, waited = time.perf_counter(), waited_seconds()
        self.device_timer.start(call.x_model.device)
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
        first_row = call.offset if call.stream_order is None else call.stream_order * b
        self.accounting.account_call(first_row, b, call.rows_host, self.tokens.used, call.stream, x_model.shape)
        self.tokens.used = False
        if self.experts.several:
            name, report = self.experts.names[call.expert], self.current
            report.calls_by_module[name] = report.calls_by_module.get(name, 0) + 1
            report.network_calls_by_module[name] = report.network_calls_by_module.get(name, 0) + bool(call.rows_host)
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
        self.current.overhead_seconds += call.overhead + self._host_seconds(started, waited, x_model)
        return output

    def _approximate(self, plan: CallPlan, x_model: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """The outputs the extrapolated x0 implies for this call's rows (rows ``offset`` on of the step)."""
        x0_hat = plan.x0_hat[offset: offset + x_model.shape[0]]
        out = self.state.parameterization.output_from_x0(x_model.float(), x0_hat, plan.lvl)
        return out.to(x_model.dtype)

    def _record_step(self, plan: CallPlan, x_model: torch.Tensor, output: torch.Tensor) -> None:
        """Advance the trajectory by one step (every stream's rows): drift history, extrapolation
        values of the computed rows, per-group guard rails, the call index."""
        state = self.state
        lvl = plan.lvl
        rows_host = state.group_rows(plan.computed_groups)
        out32 = output.float()
        if self.config.budget_planned:
            # a plan never asks the criterion, so no drift history: only the time (a new generation
            # and a solver's second stage are told by it), and x0 only where the network ran
            x0 = state.parameterization.x0_from_output(x_model.float(), out32, lvl) if rows_host else None
            state.last_tau = plan.tau_host
        else:
            x0 = state.parameterization.x0_from_output(x_model.float(), out32, lvl)
            state.push_node(lvl, plan.x_flow, flow_drift(plan.x_flow, x0, lvl.tau), plan.tau_host)
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


def _contains(module: torch.nn.Module, block: torch.nn.Module) -> bool:
    return any(m is block for m in module.modules())


def _with_static_shapes(plan: CallPlan) -> CallPlan:
    """``SADAConfig.static_shapes``: a step computes all its rows or none (a mixed step runs in
    full), and partial calls use bucketed token counts."""
    if plan.computed_groups and plan.skipped_groups:
        groups = sorted(plan.computed_groups + plan.skipped_groups)
        return dataclasses.replace(plan, computed_groups=groups, skipped_groups=[], token_plan=None)
    if plan.token_plan is not None:
        return dataclasses.replace(plan, token_plan=plan.token_plan.bucketed(TOKEN_BUCKETS))
    return plan
