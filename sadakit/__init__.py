"""sadakit: training-free diffusion acceleration (SADA) and learned few-step solvers (AdaSDE).

    import sadakit
    sadakit.accelerate(pipe)          # SADA with the pipeline family's defaults
    image = pipe(prompt).images[0]
    print(sadakit.report(pipe))       # what was skipped / pruned
    sadakit.remove(pipe)              # bit-identical to the original again
"""

from .api import accelerate, default_config, is_accelerated, remove, report
from .config import SADAConfig
from .core.parameterization import (
    EDMParameterization,
    FlowParameterization,
    NoiseLevel,
    Parameterization,
    VPParameterization,
)
from .errors import NotAcceleratedError, PluginContractError, SadakitError, UnsupportedPipelineError
from .hookspecs import hookimpl
from .outputs import OutputFormat
from .registry import register_plugin, supported_pipelines, unregister_plugin
from .runtime.report import GenerationReport
from .tuning import Preset, PresetMismatchError, TargetNotReachedError, tune
from .spec import ControlSpec, DenoiserSpec, OtherTokens, TokenArg, TokenBlockSpec, channels_first_grid

__version__ = "0.1.0"


def __getattr__(name: str):
    """AdaSDE's scheduler and distillation load on first use (they pull in diffusers' schedulers)."""
    if name in ("AdaSDEScheduler", "distill", "DistillConfig"):
        from . import adasde

        return getattr(adasde, name)
    if name == "generate_many":  # the batch runner pulls in the output writers
        from .prompt_runs import generate_many

        return generate_many
    raise AttributeError(f"module 'sadakit' has no attribute {name!r}")

__all__ = [
    "AdaSDEScheduler",
    "ControlSpec",
    "DenoiserSpec",
    "EDMParameterization",
    "FlowParameterization",
    "NoiseLevel",
    "OutputFormat",
    "Parameterization",
    "PluginContractError",
    "Preset",
    "PresetMismatchError",
    "TargetNotReachedError",
    "OtherTokens",
    "TokenArg",
    "TokenBlockSpec",
    "VPParameterization",
    "channels_first_grid",
    "DistillConfig",
    "GenerationReport",
    "NotAcceleratedError",
    "SADAConfig",
    "SadakitError",
    "UnsupportedPipelineError",
    "accelerate",
    "default_config",
    "distill",
    "generate_many",
    "hookimpl",
    "is_accelerated",
    "register_plugin",
    "remove",
    "report",
    "supported_pipelines",
    "tune",
    "unregister_plugin",
]
