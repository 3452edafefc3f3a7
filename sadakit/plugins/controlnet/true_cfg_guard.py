"""Refuses true CFG on Flux ControlNet pipelines (``true_cfg_scale > 1`` with a negative prompt).

The pipeline then calls the ControlNet and the transformer once per branch on the same latent,
and the ControlNet's call decides the step for the transformer call that follows it; the
runtime's call streams (which serve plain Flux's true CFG) do not yet carry a control branch's
decision per stream. Raised at the second call of a step, before SADA decides anything.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch

from ...errors import UnsupportedPipelineError


class _TrueCFGGuard:
    def __init__(self, pipe: Any) -> None:
        self.pipe_name = type(pipe).__name__
        self._last: weakref.ref | None = None

    def __call__(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        latent = kwargs.get("hidden_states", args[0] if args else None)
        if latent is None:
            return
        if self._last is not None and self._last() is latent:
            self._last = None
            raise UnsupportedPipelineError(
                f"{self.pipe_name}: the transformer was called twice on the same latent in one step, which is what "
                "true_cfg_scale > 1 with a negative_prompt does (separate cond/uncond calls). sadakit accelerates "
                "separate-call CFG on FluxPipeline but not yet with a ControlNet: use true_cfg_scale=1.0 (Flux's "
                "guidance_scale embedding still works), or sadakit.remove(pipe) for this generation"
            )
        self._last = weakref.ref(latent)


_GUARDS: "weakref.WeakKeyDictionary[Any, torch.utils.hooks.RemovableHandle]" = weakref.WeakKeyDictionary()


def install_true_cfg_guard(pipe: Any, transformer: torch.nn.Module) -> None:
    remove_true_cfg_guard(pipe)
    _GUARDS[pipe] = transformer.register_forward_pre_hook(_TrueCFGGuard(pipe), with_kwargs=True)


def remove_true_cfg_guard(pipe: Any) -> None:
    handle = _GUARDS.pop(pipe, None)
    if handle is not None:
        handle.remove()
