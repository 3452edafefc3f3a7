"""The plugin manager: finds the plugin that owns a pipeline and asks it the contract's questions.

It fails safely: a plugin that cannot be imported or registered is skipped with one warning
naming it and its error (the others keep working); a hook implementation with a name the
contract does not have is refused at registration; the argument names a plugin declares are
checked against the modules' ``forward`` signatures when a pipeline is accelerated.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import inspect
import warnings
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginContractError, UnsupportedPipelineError

_BUILTIN_PLUGINS = (
    "sadakit.plugins.image.stable_diffusion",
    "sadakit.plugins.image.flux",
    "sadakit.plugins.controlnet.plugin",
    "sadakit.plugins.audio.musicldm",
    "sadakit.plugins.video.wan:plugin",
    "sadakit.plugins.image.sd3:plugin",
    "sadakit.plugins.image.chroma:plugin",
    "sadakit.plugins.video.cogvideox:plugin",
    "sadakit.plugins.video.ltx:plugin",
    "sadakit.plugins.video.hunyuan_video:plugin",
    "sadakit.plugins.video.wan_i2v:plugin",
    "sadakit.plugins.audio.stable_audio:plugin",
    "sadakit.plugins.image.qwen_image:plugin",
    "sadakit.plugins.image.flux_kontext:plugin",
)

_manager: pluggy.PluginManager | None = None



def plugin_manager() -> pluggy.PluginManager:
    """The process-wide manager, with built-ins and ``sadakit`` entry points loaded once."""
    global _manager
    if _manager is None:
        pm = pluggy.PluginManager(hookspecs.PROJECT)
        pm.add_hookspecs(hookspecs)
        for name in _BUILTIN_PLUGINS:
            _register_or_warn(pm, name, lambda name=name: _import_plugin(name), "built-in plugin")
        for entry_point in importlib.metadata.entry_points(group=hookspecs.PROJECT):
            if pm.get_plugin(entry_point.name) is None and not pm.is_blocked(entry_point.name):
                _register_or_warn(pm, entry_point.name, entry_point.load,
                                  f"plugin from entry point {entry_point.value!r}")
        _manager = pm
    return _manager


def _import_plugin(path: str) -> Any:
    """``"package.module"`` (a module of hook functions) or ``"package.module:object"``."""
    module_name, _, attribute = path.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attribute) if attribute else module


def _register_or_warn(pm: pluggy.PluginManager, name: str, load, what: str) -> None:
    """Import and register one plugin; on any failure, warn once and go on without it."""
    try:
        _register_checked(pm, load(), name)
    except Exception as error:  # a stranger's import error must not take the built-in plugins down
        warnings.warn(f"sadakit: {what} {name!r} was skipped: {type(error).__name__}: {error}", RuntimeWarning,
                      stacklevel=3)


def _register_checked(pm: pluggy.PluginManager, plugin: Any, name: str | None) -> str:
    """``pm.register`` that refuses hook implementations the contract has no specification for."""
    try:
        registered = pm.register(plugin, name=name)
    except pluggy.PluginValidationError as error:
        raise PluginContractError(f"sadakit plugin {name or plugin!r}: {error}") from error
    unknown = [impl.function.__name__ for hook_name in dir(pm.hook) if not hook_name.startswith("_")
               for impl in getattr(pm.hook, hook_name).get_hookimpls()
               if impl.plugin is plugin and getattr(pm.hook, hook_name).spec is None]
    if unknown:
        pm.unregister(plugin)
        known = sorted(n for n in dir(hookspecs) if n.startswith("sadakit_"))
        raise PluginContractError(
            f"sadakit plugin {registered!r} implements {', '.join(unknown)}, which the contract does not define "
            f"(misspelled?); the hooks are: {', '.join(known)}"
        )
    return registered


def register_plugin(plugin: Any, name: str | None = None) -> str:
    """Register a plugin object at run time (the entry-point group does this for packages).

    Raises :class:`sadakit.PluginContractError` for a hook implementation whose name or
    arguments the contract (``sadakit.hookspecs``) does not define.
    """
    return _register_checked(plugin_manager(), plugin, name)


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
        spec = _unwrapped(spec)
        for i, module in enumerate(spec.modules):
            what = "DenoiserSpec" if i == 0 else f"DenoiserSpec.experts[{i - 1}]"
            self._check_arguments(pipe, what, module, {"sample_arg": spec.sample_arg, "timestep_arg": spec.timestep_arg})
        return spec

    def parameterization(self, pipe):
        return self._call("sadakit_parameterization", pipe=pipe)

    def cfg_groups(self, pipe, batch_size: int):
        return self._call("sadakit_cfg_groups", pipe=pipe, batch_size=batch_size)

    def token_blocks(self, pipe, denoiser):
        blocks = self._call("sadakit_token_blocks", default=[], pipe=pipe, denoiser=denoiser)
        for block in blocks:
            names = {"hidden_arg": block.hidden_arg, **{f"token_args[{n!r}]": n for n in block.token_args}}
            self._check_arguments(pipe, f"TokenBlockSpec {block.name!r}", block.module, names)
        return blocks

    def control_modules(self, pipe):
        specs = [_unwrapped(spec) for spec in self._call("sadakit_control_modules", default=[], pipe=pipe)]
        for spec in specs:
            self._check_arguments(pipe, "ControlSpec", spec.module,
                                  {"sample_arg": spec.sample_arg, "timestep_arg": spec.timestep_arg})
        return specs

    def _check_arguments(self, pipe, what: str, module, names: dict[str, str]) -> None:
        """Every argument name a spec declares is one the module's forward takes."""
        parameters = inspect.signature(module.forward).parameters
        if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
            accepted = None  # **kwargs: any name may be passed
        else:
            accepted = [n for n, p in parameters.items() if p.kind is not p.VAR_POSITIONAL]
        for field_name, arg in names.items():
            if accepted is not None and arg not in accepted:
                raise PluginContractError(
                    f"plugin {self.name!r} declares {what}.{field_name}={arg!r} for {type(pipe).__name__}, but "
                    f"{type(module).__name__}.forward takes ({', '.join(accepted)})"
                )

    def output_kind(self, pipe) -> str:
        default = "audio" if hasattr(pipe, "vocoder") else "image"
        kind = self._call("sadakit_output_kind", default=default, pipe=pipe)
        kinds = output_formats()
        if kind not in kinds:
            raise PluginContractError(f"plugin {self.name!r} says {type(pipe).__name__} makes {kind!r}; "
                                      f"allowed: {', '.join(kinds)} (a new kind needs an OutputFormat from "
                                      "sadakit_output_formats)")
        return kind

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
    experts = tuple(unwrap_module(e) for e in getattr(spec, "experts", ()))
    if module is spec.module and all(a is b for a, b in zip(experts, getattr(spec, "experts", ()))):
        return spec
    return dataclasses.replace(spec, module=module, **({"experts": experts} if experts else {}))


def supported_pipelines() -> list[str]:
    """Every pipeline class name some registered plugin handles."""
    pm = plugin_manager()
    names: list[str] = []
    for impl in pm.hook.sadakit_supported_pipelines.get_hookimpls():
        names.extend(impl.function() or [])
    return sorted(set(names))


def output_formats() -> dict:
    """Every kind of output by name: the built-in image, video and audio, and those plugins add."""
    from .outputs import BUILT_IN, OutputFormat

    formats, owners = dict(BUILT_IN), {kind: "sadakit" for kind in BUILT_IN}
    pm = plugin_manager()
    for impl in pm.hook.sadakit_output_formats.get_hookimpls():
        name = pm.get_name(impl.plugin)
        for fmt in impl.function() or []:
            if not isinstance(fmt, OutputFormat):
                raise PluginContractError(f"plugin {name!r}: sadakit_output_formats must return sadakit.OutputFormat "
                                          f"values, got {type(fmt).__name__}")
            if fmt.kind in formats:
                raise PluginContractError(f"plugin {name!r} adds output kind {fmt.kind!r}, which {owners[fmt.kind]!r} "
                                          "already defines; choose another name")
            formats[fmt.kind], owners[fmt.kind] = fmt, name
    return formats


def output_format_of(pipe: Any):
    """How ``pipe``'s outputs are saved (:class:`sadakit.OutputFormat`), from its output kind."""
    return output_formats()[output_kind_of(pipe)]


def output_kind_of(pipe: Any) -> str:
    """What ``pipe`` makes ("image", "video", "audio"), from its plugin; a pipeline no plugin
    claims makes audio if it has a vocoder, else images."""
    try:
        return find_plugin(pipe).output_kind(pipe)
    except UnsupportedPipelineError:
        return "audio" if hasattr(pipe, "vocoder") else "image"


def family_of(pipe: Any) -> str | None:
    """The family name of the plugin that claims ``pipe``, or None."""
    try:
        return find_plugin(pipe).family
    except UnsupportedPipelineError:
        return None


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
