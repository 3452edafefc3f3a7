"""Errors users see; each names the pipeline, the argument and what is allowed."""


class SadakitError(Exception):
    """Base class of sadakit's own errors."""


class UnsupportedPipelineError(SadakitError, TypeError):
    """No plugin handles this pipeline, or its scheduler/configuration cannot be served."""


class NotAcceleratedError(SadakitError, RuntimeError):
    """An operation that needs an accelerated pipeline got a plain one."""


class PluginContractError(SadakitError, ValueError):
    """A plugin's answer does not fit the contract or the pipeline (unknown hook name, an
    argument name the module's forward does not take)."""
