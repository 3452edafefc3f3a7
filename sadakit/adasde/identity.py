"""Which model a coefficient file was distilled for: a fingerprint of the denoiser, checked on load.

Why: coefficients fitted to one model sample another model badly without any error (the shapes
model's file runs in any SD pipeline), and the free ``model`` name in a file says nothing a
program can compare when the pipeline was loaded from elsewhere. The fingerprint is derived
from what defines the function the coefficients were fitted to and is cheap to read: the
denoiser's class and configuration (for diffusers models their registered config, for the
analytic testbed its configuration). It is not a weight hash: two checkpoints of one
architecture (a fine-tune) share it, which is the price of not hashing gigabytes at load.

Configuration entries that equal the class's constructor default are left out, and so are the
private ``_``-keys (diffusers' version, the load path): a diffusers release that adds a
configuration key with a default then leaves every fingerprint as it was, and a model moved
to another directory keeps its fingerprint.
"""

from __future__ import annotations

import enum
import hashlib
import inspect
import json
import logging
from collections.abc import Mapping
from typing import Any

import attrs
import torch

from ..errors import SadakitError
from .coefficients import CoefficientMetadata, OtherModelError

log = logging.getLogger("sadakit.adasde")


class FingerprintError(SadakitError, TypeError):
    """The object has no denoiser whose class and configuration sadakit can read."""


def _denoiser_of(obj: Any) -> Any:
    """The module whose identity counts: a pipeline's denoiser (its plugin knows it), an adapter's module."""
    if isinstance(obj, torch.nn.Module):
        return obj
    module = getattr(obj, "module", None)  # PipelineDenoiser
    if isinstance(module, torch.nn.Module):
        return module
    if hasattr(obj, "components"):  # a pipeline
        from ..registry import find_plugin

        return find_plugin(obj).denoiser(obj).module
    return obj


def _config_of(module: Any) -> tuple[dict[str, Any], type]:
    """The denoiser's configuration and the class whose constructor defaults it is compared with."""
    config = getattr(module, "config", None)
    if isinstance(config, Mapping):  # diffusers ConfigMixin (FrozenDict)
        return dict(config), type(module)
    if hasattr(config, "to_dict"):  # transformers PretrainedConfig
        return dict(config.to_dict()), type(config)
    testbed_config = getattr(getattr(module, "testbed", None), "config", None)
    if testbed_config is not None and attrs.has(type(testbed_config)):  # the analytic testbed's models
        return attrs.asdict(testbed_config), type(testbed_config)
    raise FingerprintError(
        f"cannot fingerprint a {type(module).__name__}: it has no diffusers/transformers config and is not a "
        "testbed model; pass a pipeline, a PipelineDenoiser or the denoiser module"
    )


def _jsonable(value: Any) -> Any:
    """Stable JSON for config values json cannot write (dtypes, enums, sets); never an address."""
    if isinstance(value, enum.Enum):
        return _jsonable(value.value)
    if isinstance(value, (set, frozenset)):
        return sorted(map(str, value))
    if isinstance(value, torch.dtype):
        return str(value)
    return f"<{type(value).__qualname__}>"


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=_jsonable)


def _init_defaults(cls: type) -> dict[str, Any]:
    try:
        params = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return {}
    return {name: p.default for name, p in params.items() if p.default is not inspect.Parameter.empty}


def _identity_entries(config: dict[str, Any], cls: type) -> dict[str, Any]:
    """The config without private keys and without entries equal to the constructor default."""
    defaults = _init_defaults(cls)
    return {
        key: value for key, value in config.items()
        if not str(key).startswith("_") and not (key in defaults and _canonical(value) == _canonical(defaults[key]))
    }


def model_fingerprint(model: Any) -> str:
    """``"<DenoiserClass>:<sha256 hex>"`` of a pipeline's (or adapter's, or module's) denoiser.

    The hash covers the class name and the sorted JSON of its configuration without private
    ``_``-keys and without entries equal to the class default. Recorded by distillation and
    compared on load (:func:`check_model_identity`). Raises :class:`FingerprintError` for
    objects without a readable configuration (a plain callable).
    """
    module = _denoiser_of(model)
    config, cls = _config_of(module)
    name = type(module).__name__
    digest = hashlib.sha256((name + "\n" + _canonical(_identity_entries(config, cls))).encode()).hexdigest()
    return f"{name}:{digest}"


def fingerprint_or_none(model: Any) -> str | None:
    """:func:`model_fingerprint`, or ``None`` when the object has no readable denoiser (a plain callable)."""
    try:
        return model_fingerprint(model)
    except SadakitError:  # FingerprintError, UnsupportedPipelineError from the registry
        return None


def short_fingerprint(fingerprint: str | None) -> str:
    """Class and the first 12 hex digits: enough to tell models apart in a message."""
    if fingerprint is None:
        return "no fingerprint"
    name, _, digest = fingerprint.partition(":")
    return f"{name}:{digest[:12]}"


def _pipeline_label(pipe: Any) -> str:
    name = getattr(getattr(pipe, "config", None), "_name_or_path", None) or ""
    return f"{type(pipe).__name__} ({name!r})" if name else type(pipe).__name__


def check_model_identity(meta: CoefficientMetadata, pipe: Any, *, source: str, allow_other_model: bool = False) -> None:
    """Refuse a file distilled for another model than ``pipe``'s (:class:`OtherModelError`).

    ``allow_other_model=True`` turns the refusal into a logged warning. Files written before
    fingerprints were recorded, and pipelines whose denoiser cannot be fingerprinted, are
    accepted with a logged warning that the model cannot be checked.
    """
    if meta.model_fingerprint is None:
        log.warning(
            "AdaSDE coefficient file %s records no model fingerprint (written before sadakit recorded one): "
            "cannot check that its model %r is the one in %s", source, meta.model, _pipeline_label(pipe),
        )
        return
    theirs = fingerprint_or_none(pipe)
    if theirs is None:
        log.warning("cannot fingerprint the denoiser of %s: not checked that it is the model %r of %s",
                    _pipeline_label(pipe), meta.model, source)
        return
    if theirs == meta.model_fingerprint:
        return
    what = (
        f"AdaSDE coefficient file {source} was distilled for model {meta.model!r} (denoiser "
        f"{short_fingerprint(meta.model_fingerprint)}), not for this {_pipeline_label(pipe)} (denoiser "
        f"{short_fingerprint(theirs)})"
    )
    if allow_other_model:
        log.warning("%s; sampling with them anyway (allow_other_model=True)", what)
        return
    raise OtherModelError(
        f"{what}; load coefficients distilled for this model, or pass allow_other_model=True "
        "(sadakit generate: --allow-other-model) to sample with them anyway"
    )
