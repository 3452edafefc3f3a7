"""The plugin manager: finds the plugin that owns a pipeline and asks it the contract's questions."""

from __future__ import annotations

import dataclasses
from typing import Any

import pluggy

from . import hookspecs
from .errors import UnsupportedPipelineError

_BUILTIN_PLUGINS = (
    "sadakit.plugins.image.stable_diffusion",
    "sadakit.plugins.image.flux",
    "sadakit.plugins.controlnet.plugin",
    "sadakit.plugins.audio.musicldm",
)

_manager: pluggy.PluginManager | None = None


def plugin_manager() -> pluggy.PluginManager:
    """The process-wide manager, with built-ins and ``sadakit`` entry points loaded once."""
    global _manager
    if _manager is None:
        import importlib

        pm = pluggy.PluginManager(hookspecs.PROJECT)
        pm.add_hookspecs(hookspecs)
        for name in _BUILTIN_PLUGINS:
            try:
                module = importlib.import_module(name)
            except ImportError:  # an optional family whose library is missing
                continue
            pm.register(module, name=name)
        pm.load_setuptools_entrypoints(hookspecs.PROJECT)
        _manager = pm
    return _manager


def register_plugin(plugin: Any, name: str | None = None) -> str:
    """Register a plugin object at run time (the entry-point group does this for packages)."""
    pm = plugin_manager()
    return pm.register(plugin, name=name)


def unregister_plugin(plugin: Any = None, name: str | None = None) -> None:
    plugin_manager().unregister(plugin=plugin, name=name)


class PluginHandle:
    """The contract's answers for one pipeline, from the plugin that claimed it."""

    def __init__(self, pm: pluggy.PluginManager, plugin: Any, family: str) -> None:
        self.plugin = plugin
        self.family = family
        self.name = pm.get_name(plugin)
        others = [p for p in pm.get_plugins() if p is not plugin]
        self._pm = pm
        self._others = others

    def _call(self, hook_name: str, default: Any = None, **kwargs: Any) -> Any:
        caller = self._pm.subset_hook_caller(hook_name, remove_plugins=self._others)
        if not caller.get_hookimpls():
            return default
        result = caller(**kwargs)
        if isinstance(result, list) and hook_name in ("sadakit_prepare", "sadakit_restore"):
            return None
        return default if result is None else result

    def denoiser(self, pipe):
        spec = self._call("sadakit_denoiser", pipe=pipe)
        if spec is None:
            raise UnsupportedPipelineError(f"plugin {self.name!r} does not name a denoiser for {type(pipe).__name__}")
        return _unwrapped(spec)

    def parameterization(self, pipe):
        return self._call("sadakit_parameterization", pipe=pipe)

    def cfg_groups(self, pipe, batch_size: int):
        return self._call("sadakit_cfg_groups", pipe=pipe, batch_size=batch_size)

    def token_blocks(self, pipe, denoiser):
        return self._call("sadakit_token_blocks", default=[], pipe=pipe, denoiser=denoiser)

    def control_modules(self, pipe):
        return [_unwrapped(spec) for spec in self._call("sadakit_control_modules", default=[], pipe=pipe)]

    def default_config(self, pipe):
        from .config import SADAConfig

        return self._call("sadakit_default_config", default=SADAConfig(), pipe=pipe)

    def validate(self, pipe, config) -> None:
        self._call("sadakit_validate", pipe=pipe, config=config)

    def prepare(self, pipe) -> None:
        self._call("sadakit_prepare", pipe=pipe)

    def restore(self, pipe) -> None:
        self._call("sadakit_restore", pipe=pipe)


def _unwrapped(spec: Any) -> Any:
    """The spec of the module under a ``torch.compile`` wrapper (``pipe.unet = torch.compile(pipe.unet)``).

    The wrapper's ``forward(*args, **kwargs)`` names no argument, and hooks belong on the module
    whose forward the compiled call runs; on it, SADA's decisions stay out of the graph too.
    """
    from diffusers.utils.torch_utils import unwrap_module

    module = unwrap_module(spec.module)
    return spec if module is spec.module else dataclasses.replace(spec, module=module)


def supported_pipelines() -> list[str]:
    """Every pipeline class name some registered plugin handles."""
    pm = plugin_manager()
    names: list[str] = []
    for impl in pm.hook.sadakit_supported_pipelines.get_hookimpls():
        names.extend(impl.function() or [])
    return sorted(set(names))


def find_plugin(pipe: Any) -> PluginHandle:
    """The plugin that claims ``pipe``; later-registered plugins are asked first."""
    pm = plugin_manager()
    # get_hookimpls() is in call order reversed: pluggy calls the last element first.
    for impl in reversed(pm.hook.sadakit_family.get_hookimpls()):
        family = impl.function(pipe=pipe)
        if family:
            return PluginHandle(pm, impl.plugin, family)
    supported = supported_pipelines()
    raise UnsupportedPipelineError(
        f"No sadakit plugin handles {type(pipe).__module__}.{type(pipe).__name__}. "
        f"Supported pipelines: {', '.join(supported) if supported else '(none registered)'}. "
        "A new modality can be added with a plugin (see sadakit.hookspecs)."
    )
