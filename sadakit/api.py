"""Public API: ``accelerate``, ``remove``, ``report``, ``default_config``."""

from __future__ import annotations

import dataclasses
import logging
import warnings
import weakref
from typing import Any

from .config import SADAConfig
from .errors import NotAcceleratedError
from .registry import find_plugin
from .runtime import hooks
from .runtime.experts import component_name
from .runtime.report import GenerationReport
from .runtime.samplers import unjudgeable_sampler
from .runtime.session import SADASession
from .spec import DenoiserSpec, TokenBlockSpec
from .tuning import Preset

logger = logging.getLogger("sadakit")

_sessions: "weakref.WeakKeyDictionary[Any, SADASession]" = weakref.WeakKeyDictionary()
_last_reports: "weakref.WeakKeyDictionary[Any, GenerationReport]" = weakref.WeakKeyDictionary()


def _lookup(table: "weakref.WeakKeyDictionary", pipe: Any) -> Any:
    """``table.get(pipe)`` that also accepts objects that cannot be weakly referenced."""
    try:
        return table.get(pipe)
    except TypeError:
        return None


def default_config(pipe: Any) -> SADAConfig:
    """The tuned defaults of the pipeline's family."""
    return find_plugin(pipe).default_config(pipe)


def is_accelerated(pipe: Any) -> bool:
    return _lookup(_sessions, pipe) is not None


def accelerate(pipe: Any, config: SADAConfig | Preset | None = None) -> Any:
    """Apply SADA to ``pipe`` (in place) and return it.

    ``config`` may be a tuned :class:`sadakit.Preset` (``sadakit.tune``), refused for a pipeline,
    model or scheduler it was not tuned for. Everything is validated before anything is
    changed: on error the pipeline is untouched. Accelerating an accelerated pipeline replaces
    its configuration.
    """
    if isinstance(config, Preset):
        config = config.config_for(pipe)
    plugin = find_plugin(pipe)
    if config is None:
        config = plugin.default_config(pipe)
    if not isinstance(config, SADAConfig):
        raise TypeError(
            f"sadakit.accelerate(config=...) expects a sadakit.SADAConfig, got {type(config).__name__}"
        )
    plugin.validate(pipe, config)
    plugin.parameterization(pipe)  # raises for a scheduler that cannot be served
    spec = plugin.denoiser(pipe)
    blocks = _token_blocks(plugin, pipe, spec) if config.token_sparsity else []
    if _lookup(_sessions, pipe) is not None:
        logger.info("sadakit: %s was already accelerated; replacing its configuration", type(pipe).__name__)
        remove(pipe)
    else:
        for module in spec.modules:
            registry = getattr(module, "_diffusers_hook", None)
            if registry is not None and registry.get_hook(hooks.DENOISER_HOOK) is not None:
                raise RuntimeError(
                    f"the denoiser of {type(pipe).__name__} ({type(module).__name__}) already carries a sadakit hook "
                    "from another pipeline object sharing it; call sadakit.remove on that pipeline first"
                )
    reason = unjudgeable_sampler(getattr(pipe, "scheduler", None))
    if reason is not None and config.enabled:
        warnings.warn(f"sadakit.accelerate({type(pipe).__name__}): {reason}", UserWarning, stacklevel=2)
    controls = plugin.control_modules(pipe)
    session = SADASession(pipe, plugin, config, spec, blocks, controls)
    plugin.prepare(pipe)
    try:
        hooks.install(session)
    except Exception:
        hooks.uninstall(session)
        plugin.restore(pipe)
        raise
    _sessions[pipe] = session
    return pipe


def _token_blocks(plugin: Any, pipe: Any, spec: DenoiserSpec) -> list[TokenBlockSpec]:
    """The eligible blocks of the denoiser and of each expert; an expert's block names are
    prefixed with the expert's component name, so that names stay unique."""
    blocks = list(plugin.token_blocks(pipe, spec.module))
    for i, expert in enumerate(spec.experts, start=1):
        label = component_name(pipe, expert, f"expert{i}")
        blocks += [dataclasses.replace(b, name=f"{label}.{b.name}") for b in plugin.token_blocks(pipe, expert)]
    return blocks


def remove(pipe: Any) -> bool:
    """Restore ``pipe`` exactly; returns False (and does nothing) if it was not accelerated."""
    session = _lookup(_sessions, pipe)
    if session is None:
        return False
    del _sessions[pipe]
    hooks.uninstall(session)
    session.plugin.restore(pipe)
    last = session.report()
    if last is not None:
        _last_reports[pipe] = last
    return True


def report(pipe: Any) -> GenerationReport:
    """What the last generation of ``pipe`` did (also available right after ``remove``)."""
    session = _lookup(_sessions, pipe)
    rep = session.report() if session is not None else _lookup(_last_reports, pipe)
    if rep is None:
        if session is None:
            raise NotAcceleratedError(
                f"{type(pipe).__name__} is not accelerated: call sadakit.accelerate(pipe) and generate first"
            )
        raise NotAcceleratedError(f"{type(pipe).__name__} is accelerated but has not generated yet")
    return rep
