"""diffusers hooks that connect the session to the denoiser and its blocks.

One hook class per job: the denoiser call (decide, skip or run on some rows) and the token
block (run on a token subset, fill the rest from a residual cache). Removal by name through
``HookRegistry`` restores the modules exactly.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from typing import Any, Iterator

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState, StateManager

from ..errors import PluginContractError
from ..spec import TokenArg, TokenBlockSpec
from .entry import remove_doors
from .marker import install_marker, raise_copy_error, remove_marker
from .session import SADASession

DENOISER_HOOK = "sadakit_sada_denoiser"
BLOCK_HOOK = "sadakit_sada_tokens"


class _NoState(BaseState):
    def reset(self, *args: Any, **kwargs: Any) -> None:
        pass


class DenoiserHook(ModelHook):
    """Replaces the denoiser's forward with the session's decide-and-run.

    Stateful, so that diffusers' ``cache_context(name)`` reaches it: pipelines that call the
    denoiser once per CFG branch name each call ("cond", "uncond"), and the name is the call's
    stream.
    """

    _is_stateful = True

    def __init__(self, session: SADASession, expert: int = 0) -> None:
        super().__init__()
        self.session = session
        self.expert = expert  # the module's index among DenoiserSpec.modules
        self.cache_context = StateManager(_NoState)  # diffusers sets the pipeline's context here

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        session = self.session
        # the door (see .entry) decided this call already, or the call is not the pipeline's
        # (a ``from_pipe`` sibling sharing this module, a direct call)
        if session.network_open or not session.serving():
            return self.fn_ref.original_forward(*args, **kwargs)
        # reached without the door (a pipeline without a progress bar, compiled after accelerate):
        # decide here, in a compiler-disabled region
        return session.run(self.fn_ref.original_forward, args, kwargs, self._context_name(), expert=self.expert)

    def serve(self, network: Any, eager: Any, args: tuple, kwargs: dict) -> Any:
        """The door's call: decide, then run ``network`` on what must be computed."""
        if not self.session.serving():
            return network(*args, **kwargs)
        return self.session.run(network, args, kwargs, self._context_name(), eager, self.expert)

    def __deepcopy__(self, memo: dict) -> Any:
        raise_copy_error(self.session)

    def _context_name(self) -> str | None:
        context = getattr(self.cache_context, "_context", None)
        return getattr(context, "name", context)

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.session.finish_generation()
        return module


class TokenBlockHook(ModelHook):
    """Runs a token block on the plan's tokens; the others get input + their last residual.

    One hook for every plugin: the block's :class:`~sadakit.spec.TokenBlockSpec` says
    which argument holds the (B, N, C) hidden states, which other arguments are indexed by
    token (:class:`~sadakit.spec.TokenArg`), which hidden tokens are not grid tokens
    (:class:`~sadakit.spec.OtherTokens`, always computed) and where the tokens are in a tuple
    output.
    The session keeps, per row, each token's last residual ``block(h) - h``, so a pruned token
    follows its current input instead of freezing at an old output.
    """

    _is_stateful = False  # state lives in the session and is reset with it

    def __init__(self, session: SADASession, spec: TokenBlockSpec) -> None:
        super().__init__()
        self.session = session
        self.spec = spec
        self.name = spec.name
        # argument name -> position in a positional call (bound once; dynamo-friendly lookups)
        params = [p for p in inspect.signature(spec.module.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        self._position = {p.name: i for i, p in enumerate(params)}

    def __deepcopy__(self, memo: dict) -> Any:
        raise_copy_error(self.session)

    def _get(self, name: str, args: tuple, kwargs: dict) -> Any:
        if name in kwargs:
            return kwargs[name]
        position = self._position.get(name)
        return args[position] if position is not None and position < len(args) else None

    def _replaced(self, args: tuple, kwargs: dict, values: dict[str, Any]) -> tuple[tuple, dict]:
        args, kwargs = list(args), dict(kwargs)
        for name, value in values.items():
            position = self._position.get(name)
            if name not in kwargs and position is not None and position < len(args):
                args[position] = value
            else:
                kwargs[name] = value
        return tuple(args), kwargs

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        # Traced by torch.compile as part of the network (``fullgraph`` too): the call's jobs were
        # prepared before the network ran, and here there is only tensor work on them. The
        # eager exception is a shape's first call, which runs uncompiled (see TokenCache.begin_call).
        original = self.fn_ref.original_forward
        route = self.session.tokens.route
        if route is None:
            return original(*args, **kwargs)
        spec = self.spec
        hidden = self._get(spec.hidden_arg, args, kwargs)
        if route.learning:
            return self._learning_forward(original, hidden, args, kwargs)
        job = route.jobs.get(self.name)
        if job is None:
            return original(*args, **kwargs)
        if hidden.shape[1] != job.n_tokens:  # e.g. other tokens of another prompt length
            job.mismatch = True
            return original(*args, **kwargs)
        if job.idx is None:  # a full call: keep the residual for the calls that prune
            out = original(*args, **kwargs)
            job.residual_out = _tokens_of(out, spec.output_index) - hidden
            return out
        token_args = {name: self._get(name, args, kwargs) for name in spec.token_args}
        token_args = {name: value for name, value in token_args.items() if value is not None}
        shared = any(_without_batch(value, spec.token_args[name], hidden.shape[0])
                     for name, value in token_args.items())
        idx, hidden_idx = (job.shared_idx, job.shared_hidden_idx) if shared else (job.idx, job.hidden_idx)
        job.k = idx.shape[-1]  # a static shape: the grid tokens this block computes, for the report
        h_sel = _take(hidden, 1, hidden_idx, 0)
        values = {spec.hidden_arg: h_sel}
        for name, value in token_args.items():
            values[name] = _take_argument(value, spec.token_args[name], idx, job.grid_tokens)
        run_args, run_kwargs = self._replaced(args, kwargs, values)
        out = original(*run_args, **run_kwargs)
        residual = job.residual_in
        delta = (_tokens_of(out, spec.output_index) - h_sel).to(residual.dtype)
        if hidden_idx.dim() == 1:
            residual = residual.index_copy(1, hidden_idx, delta)
        else:
            residual = residual.scatter(1, hidden_idx.unsqueeze(-1).expand(-1, -1, residual.shape[-1]), delta)
        job.residual_out = residual
        merged = hidden + residual.to(hidden.dtype)
        if spec.output_index is None:
            return merged
        out = list(out)
        out[spec.output_index] = merged
        return tuple(out)

    @torch.compiler.disable
    def _learning_forward(self, original: Any, hidden: torch.Tensor, args: tuple, kwargs: dict) -> Any:
        """The block on a shape's first (eager, possibly FLOP-measured) call: full, reported."""
        self._check_token_args(args, kwargs)
        accounting = self.session.accounting
        before = accounting.flops_before()
        out = original(*args, **kwargs)
        accounting.block_measured(self.name, before)
        self.session.tokens.learned(self.name, hidden, _tokens_of(out, self.spec.output_index))
        return out

    def _check_token_args(self, args: tuple, kwargs: dict) -> None:
        """On a shape's first (eager) call: each declared ``elements`` exists in its argument."""
        for name, how in self.spec.token_args.items():
            value = self._get(name, args, kwargs)
            if value is None or how.elements is None:
                continue
            if not isinstance(value, (tuple, list)) or max(how.elements) >= len(value):
                got = f"a {type(value).__name__} of {len(value)}" if isinstance(value, (tuple, list)) \
                    else f"a {type(value).__name__}"
                raise PluginContractError(
                    f"TokenBlockSpec {self.name!r}: token_args[{name!r}] declares elements={how.elements}, but "
                    f"{type(self.spec.module).__name__} received {got} for {name!r}")


def _tokens_of(out: Any, index: int | None) -> torch.Tensor:
    return out if index is None else out[index]


def _per_token_parts(value: Any, how: TokenArg) -> list[Any]:
    """The parts of an argument that are indexed by token: its tuple elements (those named by
    ``elements``), or the argument itself."""
    if not isinstance(value, (tuple, list)):
        return [value]
    return list(value) if how.elements is None else [value[i] for i in how.elements if i < len(value)]


def _without_batch(value: Any, how: TokenArg, batch: int) -> bool:
    dims = how.dims
    return any(isinstance(t, torch.Tensor) and (0 in dims or (t.shape[0] != batch and batch > 1))
               for t in _per_token_parts(value, how))


def _take(t: torch.Tensor, dim: int, idx: torch.Tensor, leading: int, trailing: int = 0) -> torch.Tensor:
    """Keep the ``leading`` entries along ``dim``, then the tokens ``leading + idx``, then the
    ``trailing`` entries after the tokens.

    ``idx`` is (k,) (one set for every row) or (B, k) (per row; ``t`` then has rows on dim 0).
    """
    if leading:
        front = torch.arange(leading, device=idx.device)
        idx = torch.cat([front.expand(*idx.shape[:-1], leading), idx + leading], dim=-1)
    if trailing:
        start = t.shape[dim] - trailing
        rest = torch.arange(start, start + trailing, device=idx.device)
        idx = torch.cat([idx, rest.expand(*idx.shape[:-1], trailing)], dim=-1)
    idx = idx.to(t.device)
    if idx.dim() == 1:
        return t.index_select(dim, idx)
    view = [idx.shape[0]] + [1] * (dim - 1) + [idx.shape[1]] + [1] * (t.dim() - dim - 1)
    size = list(t.shape)
    size[dim] = idx.shape[1]
    if t.shape[0] != idx.shape[0]:  # a per-row call on an argument without rows cannot happen
        raise ValueError(f"per-row token selection on an argument with {t.shape[0]} rows for {idx.shape[0]}")
    return t.gather(dim, idx.reshape(view).expand(size))


def _take_argument(value: Any, how: TokenArg, idx: torch.Tensor, n: int, top: bool = True) -> Any:
    """A declared per-token argument on the selected grid tokens (tuples element-wise, only the
    ``elements`` named); along each token axis the entries of other tokens (in front of the
    grid's last ``n``, or after its first ``n``) are kept; an axis shorter than ``n`` is unchanged."""
    if isinstance(value, (tuple, list)):
        chosen = how.elements if top else None  # ``elements`` names the top-level tuple's positions
        return type(value)(_take_argument(v, how, idx, n, False) if chosen is None or i in chosen else v
                           for i, v in enumerate(value))
    if not isinstance(value, torch.Tensor):
        return value
    dims = how.dims
    if idx.dim() == 2 and (0 in dims or value.shape[0] != idx.shape[0]):
        idx = idx[0]
    for dim in dims:
        if value.dim() <= dim or value.shape[dim] < n:
            continue
        others = value.shape[dim] - n
        if how.others == "trailing":
            value = _take(value, dim, idx, 0, others)
        else:
            value = _take(value, dim, idx, others)
    return value


CONTROL_HOOK = "sadakit_sada_control"


class ControlHook(ModelHook):
    """Makes a control branch follow the step's decision (skipped rows skip the branch too)."""

    def __init__(self, session: SADASession, spec) -> None:
        super().__init__()
        self.session = session
        self.spec = spec

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        session = self.session
        if session.network_open or not session.serving():
            return self.fn_ref.original_forward(*args, **kwargs)
        return session.run_control(self.spec, self.fn_ref.original_forward, args, kwargs)

    def serve(self, network: Any, eager: Any, args: tuple, kwargs: dict) -> Any:
        if not self.session.serving():
            return network(*args, **kwargs)
        return self.session.run_control(self.spec, network, args, kwargs)

    def __deepcopy__(self, memo: dict) -> Any:
        raise_copy_error(self.session)


def install(session: SADASession) -> None:
    """Register the session's hooks; the caller has validated everything beforehand."""
    session.door_keepers = []
    registries = []
    for expert, module in enumerate(session.denoiser.modules):
        with _beneath_accelerate_hook(module):
            registry = HookRegistry.check_if_exists_or_initialize(module)
            denoiser_hook = DenoiserHook(session, expert)
            registry.register_hook(denoiser_hook, DENOISER_HOOK)
        registries.append(registry)
        session.door_keepers.append((module, denoiser_hook.serve))
    if session.config.token_sparsity:
        for block in session.token_blocks:
            with _beneath_accelerate_hook(block.module):
                block_registry = HookRegistry.check_if_exists_or_initialize(block.module)
                block_registry.register_hook(TokenBlockHook(session, block), BLOCK_HOOK)
    for control in session.controls:
        control_hook = ControlHook(session, control)
        with _beneath_accelerate_hook(control.module):
            HookRegistry.check_if_exists_or_initialize(control.module).register_hook(control_hook, CONTROL_HOOK)
        session.door_keepers.append((control.module, control_hook.serve))
    for registry in registries:
        registry.invalidate_child_registries_cache()
    session.marked = install_marker(session.pipe, session)
    session.check_doors()


def uninstall(session: SADASession) -> None:
    """Remove every hook this session registered and leave no trace on the modules."""
    modules = session.denoiser.modules
    registries = {}
    for module in modules:
        registry = getattr(module, "_diffusers_hook", None)
        if registry is not None:
            registries[id(module)] = registry
            with _beneath_accelerate_hook(module):
                registry.remove_hook(DENOISER_HOOK, recurse=False)
    for block in session.token_blocks:
        block_registry = getattr(block.module, "_diffusers_hook", None)
        if block_registry is not None:
            with _beneath_accelerate_hook(block.module):
                block_registry.remove_hook(BLOCK_HOOK, recurse=False)
                _drop_empty_registry(block.module)
    for control in session.controls:
        control_registry = getattr(control.module, "_diffusers_hook", None)
        if control_registry is not None:
            with _beneath_accelerate_hook(control.module):
                control_registry.remove_hook(CONTROL_HOOK, recurse=False)
                _drop_empty_registry(control.module)
    for module in modules:
        registry = registries.get(id(module))
        if registry is not None:
            registry.invalidate_child_registries_cache()
        with _beneath_accelerate_hook(module):
            _drop_empty_registry(module)
    remove_marker(session.pipe, session)
    remove_doors(session.doors)
    session.door_keepers = []
    session.marked = False
    session.finish_generation()


@contextmanager
def _beneath_accelerate_hook(module: torch.nn.Module) -> Iterator[None]:
    """Change a module's forward chain underneath an accelerate hook, if it has one.

    ``enable_model_cpu_offload`` wraps each model's forward with an accelerate hook and, at the
    end of every pipeline call, removes and re-adds it, restoring the forward that hook saw
    (``_old_forward``). A hook put on top of accelerate's would be dropped after the first
    generation; put beneath it, accelerate saves and restores it with its own.
    """
    hook = getattr(module, "_hf_hook", None)
    if hook is None:
        yield
        return
    from accelerate.hooks import add_hook_to_module, remove_hook_from_module

    remove_hook_from_module(module)
    try:
        yield
    finally:
        add_hook_to_module(module, hook)


def _drop_empty_registry(module: torch.nn.Module) -> None:
    """Delete an empty registry and the instance-level forward it left, so the module is as new.

    The registry puts back the forward it found as an instance attribute. When that is just the
    class's own forward bound to the module, deleting it is exact. Anything else was there
    before us (accelerate's offload wrapper from ``enable_model_cpu_offload``) and stays.
    """
    registry = getattr(module, "_diffusers_hook", None)
    if registry is not None and not registry.hooks:
        del module._diffusers_hook
        forward = module.__dict__.get("forward")
        if getattr(forward, "__self__", None) is module and getattr(forward, "__func__", None) is type(module).forward:
            del module.__dict__["forward"]
