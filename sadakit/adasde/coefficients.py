"""AdaSDE coefficient files: safetensors tensors plus JSON metadata, never a pickle.

A file holds the raw per-step parameters (``raw``, shape ``(steps, 4)``: gamma, r, a, c
before squashing) and the exact sigma grid they were fitted on (``sigmas``, ``steps + 1``
values). Everything needed to decide whether the file fits a pipeline sits in the safetensors
header under the key ``sadakit.adasde`` as one JSON object: a learned coefficient only means
something for the model, NFE, schedule, sigma range and guidance scale it was distilled on,
so loading checks them and refuses a mismatch by name.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import attrs
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..core.adasde import BASE_SOLVERS, N_COEFFS, count_nfe
from ..errors import SadakitError

METADATA_KEY = "sadakit.adasde"
FORMAT_VERSION = 1
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample", "flow")


class CoefficientMismatchError(SadakitError, ValueError):
    """A coefficient file does not fit the pipeline or request it is used with."""


def _sadakit_version() -> str:
    try:
        from importlib.metadata import version

        return version("sadakit")
    except Exception:  # not installed as a distribution (e.g. run from a checkout)
        return "0.1.0"


def _positive(inst: Any, attribute: attrs.Attribute, value: float) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{attribute.name}={value!r} must be a finite number > 0")


def _one_of(allowed: tuple[str, ...]):
    def check(inst: Any, attribute: attrs.Attribute, value: str) -> None:
        if value not in allowed:
            raise ValueError(f"{attribute.name}={value!r} is not allowed; allowed: {', '.join(allowed)}")

    return check


@attrs.frozen
class CoefficientMetadata:
    """What a coefficient file was distilled for (stored as JSON in the safetensors header).

    ``model`` is a free identity string (hub id, local path name or testbed config) compared
    verbatim. ``prediction_type`` is the model's output kind ("flow" for flow matching), which
    decides how the scheduler talks to the model. ``training`` records the distillation
    settings (teacher factor, iterations, lr, batch, seed, loss) for provenance only.
    """

    model: str
    nfe: int = attrs.field(validator=attrs.validators.ge(1))
    solver: str = attrs.field(default="adasde", validator=_one_of(BASE_SOLVERS))
    analytic_first_step: bool = True
    schedule: str = "karras"
    sigma_min: float = attrs.field(default=0.002, validator=_positive)
    sigma_max: float = attrs.field(default=80.0, validator=_positive)
    gamma_max: float = attrs.field(default=0.3, validator=attrs.validators.ge(0.0))
    prediction_type: str = attrs.field(default="epsilon", validator=_one_of(PREDICTION_TYPES))
    guidance_scale: float | None = None
    training: dict = attrs.field(factory=dict)
    sadakit_version: str = attrs.field(factory=_sadakit_version)
    format_version: int = FORMAT_VERSION

    @property
    def steps(self) -> int:
        """Number of solver steps implied by the NFE and the solver."""
        from ..core.adasde import steps_for_nfe

        return steps_for_nfe(self.nfe, self.solver, self.analytic_first_step)

    def to_json(self) -> str:
        return json.dumps(attrs.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "CoefficientMetadata":
        data = json.loads(text)
        known = {a.name for a in attrs.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CoefficientMismatchError(
                f"coefficient metadata has fields this sadakit does not know: {unknown}; "
                f"the file was written by sadakit {data.get('sadakit_version', '?')}"
            )
        return cls(**data)


@attrs.frozen
class CoefficientFile:
    """Raw coefficients ``(steps, 4)`` float32, the sigma grid ``(steps + 1,)`` float64, metadata."""

    raw: torch.Tensor
    sigmas: torch.Tensor
    meta: CoefficientMetadata

    def __attrs_post_init__(self) -> None:
        steps = self.meta.steps
        if tuple(self.raw.shape) != (steps, N_COEFFS):
            raise CoefficientMismatchError(
                f"raw coefficients have shape {tuple(self.raw.shape)}, but nfe={self.meta.nfe} with "
                f"solver={self.meta.solver!r} needs ({steps}, {N_COEFFS})"
            )
        if tuple(self.sigmas.shape) != (steps + 1,):
            raise CoefficientMismatchError(
                f"sigma grid has shape {tuple(self.sigmas.shape)}; expected ({steps + 1},) for {steps} steps"
            )
        if count_nfe(steps, self.meta.solver, self.meta.analytic_first_step) != self.meta.nfe:
            raise CoefficientMismatchError(f"nfe={self.meta.nfe} is inconsistent with {steps} steps")
        if not bool((self.sigmas[:-1] > self.sigmas[1:]).all()):
            raise CoefficientMismatchError("sigma grid must be strictly decreasing")


def save_coefficients(path: str | os.PathLike, raw: torch.Tensor, sigmas: torch.Tensor, meta: CoefficientMetadata) -> None:
    """Write a coefficient file atomically (a crash never leaves a half-written file behind)."""
    cf = CoefficientFile(raw.detach().to("cpu", torch.float32), sigmas.detach().to("cpu", torch.float64), meta)
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    save_file(
        {"raw": cf.raw.contiguous(), "sigmas": cf.sigmas.contiguous()},
        tmp,
        metadata={METADATA_KEY: meta.to_json(), "format": "pt"},
    )
    os.replace(tmp, path)


def load_coefficients(path: str | os.PathLike) -> CoefficientFile:
    """Read a coefficient file (tensors on CPU); refuses files without sadakit metadata."""
    path = os.fspath(path)
    with safe_open(path, framework="pt", device="cpu") as f:
        header = f.metadata() or {}
        if METADATA_KEY not in header:
            raise CoefficientMismatchError(
                f"{path} is not a sadakit AdaSDE coefficient file: its safetensors header has no "
                f"{METADATA_KEY!r} entry (keys: {sorted(header)})"
            )
        names = set(f.keys())
        missing = {"raw", "sigmas"} - names
        if missing:
            raise CoefficientMismatchError(f"{path} lacks tensors {sorted(missing)}; has {sorted(names)}")
        raw, sigmas = f.get_tensor("raw"), f.get_tensor("sigmas")
    return CoefficientFile(raw, sigmas, CoefficientMetadata.from_json(header[METADATA_KEY]))


def check_compatible(
    meta: CoefficientMetadata,
    *,
    model: str | None = None,
    nfe: int | None = None,
    solver: str | None = None,
    prediction_type: str | None = None,
    guidance_scale: float | None = None,
    schedule: str | None = None,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    rtol: float = 1e-4,
) -> None:
    """Refuse a coefficient file whose metadata disagrees with the pipeline it is used with.

    Only the fields passed are compared (``None`` = unknown, not checked). The error names
    the field, the file's value and the pipeline's value, so the user knows which file or
    which pipeline setting to change.
    """
    wanted = {
        "model": model,
        "nfe": nfe,
        "solver": solver,
        "prediction_type": prediction_type,
        "guidance_scale": guidance_scale,
        "schedule": schedule,
        "sigma_min": sigma_min,
        "sigma_max": sigma_max,
    }
    problems = []
    for name, value in wanted.items():
        if value is None:
            continue
        have = getattr(meta, name)
        if isinstance(value, float) or isinstance(have, float):
            same = have is not None and math.isclose(float(have), float(value), rel_tol=rtol)
        else:
            same = have == value
        if not same:
            problems.append(f"{name}: file has {have!r}, pipeline has {value!r}")
    if problems:
        raise CoefficientMismatchError(
            "AdaSDE coefficient file does not match this pipeline (" + "; ".join(problems) + "). "
            "Distill coefficients for this setting (sadakit.adasde.distill) or load the matching file."
        )
