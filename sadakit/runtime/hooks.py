"""diffusers hooks that connect the session to the denoiser and its blocks.

One hook class per job: the denoiser call (decide, skip or run on some rows) and the token
block (run on a token subset, fill the rest from a residual cache). Removal by name through
``HookRegistry`` restores the modules exactly.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
from diffusers.hooks import HookRegistry, ModelHook

from ..core import tokens
from .session import SADASession

DENOISER_HOOK = "sadakit_sada_denoiser"
BLOCK_HOOK = "sadakit_sada_tokens"


class DenoiserHook(ModelHook):
    """Replaces the denoiser's forward with the session's decide-and-run."""

    _is_stateful = True

    def __init__(self, session: SADASession) -> None:
        super().__init__()
        self.session = session

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        return self.session.run(self.fn_ref.original_forward, args, kwargs)

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.session.finish_generation()
        return module


class TokenBlockHook(ModelHook):
    """Runs a (B, N, C) token block on the plan's tokens; the others get input + last residual.

    The cache holds, per full-batch row, each token's last residual ``block(h) - h``, so a
    pruned token follows its current input instead of freezing at an old output.
    """

    _is_stateful = False  # state lives in the session and is reset with it

    def __init__(self, session: SADASession, name: str, hidden_arg: str = "hidden_states") -> None:
        super().__init__()
        self.session = session
        self.name = name
        self.hidden_arg = hidden_arg

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        # Traced by torch.compile as part of the network: the session is read and written only
        # in the eager helpers below (graph breaks), so no guard ever sees the plan's objects.
        original = self.fn_ref.original_forward
        if args:
            hidden, rest_args, in_kwargs = args[0], args[1:], False
        else:
            hidden, rest_args, in_kwargs = kwargs[self.hidden_arg], (), True
        idx = self._indices(hidden.shape[1])
        if idx is None:
            before = self._flops_before()
            out = original(*args, **kwargs)
            self._after_full(hidden, out, before)
            return out
        gather = idx.unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
        h_sel = hidden.gather(1, gather)
        if in_kwargs:
            out_sel = original(*rest_args, **{**kwargs, self.hidden_arg: h_sel})
        else:
            out_sel = original(h_sel, *rest_args, **kwargs)
        return self._merge_partial(hidden, gather, h_sel, out_sel)

    @torch.compiler.disable
    def _indices(self, n: int) -> torch.Tensor | None:
        """The (B, k) tokens to compute, or None to run the block in full."""
        session = self.session
        plan = session.token_plan
        if plan is None or session.state is None or session.state.latent_grid is None:
            return None
        if session.block_caches.get(self.name) is None:
            return None
        grid = tokens.grid_for_tokens(session.state.latent_grid, n)
        return plan.indices(grid) if grid is not None else None

    @torch.compiler.disable
    def _flops_before(self) -> float:
        counter = self.session.flop_counter
        return counter.get_total_flops() if counter is not None else 0

    @torch.compiler.disable
    def _after_full(self, hidden: torch.Tensor, out: Any, flops_before: float, block_output: Any = None) -> None:
        """Bookkeeping of a full block call: its FLOPs (measured call), token count, residual cache."""
        session = self.session
        n = hidden.shape[1]
        counter = session.flop_counter
        if counter is not None:
            session.record_block_flops(self.name, float(counter.get_total_flops() - flops_before))
        session.block_tokens[self.name] = n
        if session.config.token_sparsity:
            self._store(hidden, out if block_output is None else block_output, session.active_rows)
        session.account_block(self.name, n, n, hidden.shape[0], None)

    @torch.compiler.disable
    def _merge_partial(self, hidden: torch.Tensor, gather: torch.Tensor, h_sel: torch.Tensor, out_sel: torch.Tensor) -> torch.Tensor:
        """Computed tokens from the block, the others from input + cached residual; cache updated."""
        session = self.session
        rows = session.active_rows
        cache = session.block_caches[self.name]
        residual = cache if rows is None else cache.index_select(0, rows)
        residual = residual.scatter(1, gather, (out_sel - h_sel).to(residual.dtype))
        out = hidden + residual.to(hidden.dtype)
        if rows is None:
            session.block_caches[self.name] = residual
        else:
            cache.index_copy_(0, rows, residual)
        n = hidden.shape[1]
        session.account_block(self.name, n, gather.shape[1], hidden.shape[0], session.block_flops(self.name))
        return out

    def _store(self, hidden: torch.Tensor, out: torch.Tensor, rows: torch.Tensor | None) -> None:
        residual = (out - hidden).detach()
        if rows is None:
            self.session.block_caches[self.name] = residual
            return
        cache = self.session.block_caches.get(self.name)
        b = self.session.state.batch_size if self.session.state is not None else None
        if cache is None or b is None or cache.shape[0] != b or cache.shape[1:] != residual.shape[1:]:
            return  # no full-batch cache yet: the next full call creates it
        cache.index_copy_(0, rows, residual)


CONTROL_HOOK = "sadakit_sada_control"


class ControlHook(ModelHook):
    """Makes a control branch follow the step's decision (skipped rows skip the branch too)."""

    def __init__(self, session: SADASession, spec) -> None:
        super().__init__()
        self.session = session
        self.spec = spec

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        return self.session.run_control(self.spec, self.fn_ref.original_forward, args, kwargs)


def install(session: SADASession) -> None:
    """Register the session's hooks; the caller has validated everything beforehand."""
    module = session.denoiser.module
    with _beneath_accelerate_hook(module):
        registry = HookRegistry.check_if_exists_or_initialize(module)
        registry.register_hook(DenoiserHook(session), DENOISER_HOOK)
    if session.config.token_sparsity:
        for block in session.token_blocks:
            with _beneath_accelerate_hook(block.module):
                block_registry = HookRegistry.check_if_exists_or_initialize(block.module)
                hook_class = block.hook_class or TokenBlockHook
                block_registry.register_hook(hook_class(session, block.name, block.hidden_arg), BLOCK_HOOK)
    for control in session.controls:
        with _beneath_accelerate_hook(control.module):
            HookRegistry.check_if_exists_or_initialize(control.module).register_hook(
                ControlHook(session, control), CONTROL_HOOK
            )
    registry.invalidate_child_registries_cache()


def uninstall(session: SADASession) -> None:
    """Remove every hook this session registered and leave no trace on the modules."""
    module = session.denoiser.module
    registry = getattr(module, "_diffusers_hook", None)
    if registry is not None:
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
    if registry is not None:
        registry.invalidate_child_registries_cache()
    with _beneath_accelerate_hook(module):
        _drop_empty_registry(module)
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
