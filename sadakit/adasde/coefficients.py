"""AdaSDE coefficient files: safetensors tensors plus JSON metadata, never a pickle.

A file holds the raw per-step parameters (``raw``, shape ``(steps, 4)``: gamma, r, a, c
before squashing) and the exact sigma grid they were fitted on (``sigmas``, ``steps + 1``
values). Everything needed to decide whether the file fits a pipeline sits in the safetensors
header under the key ``sadakit.adasde`` as one JSON object: a learned coefficient only means
something for the model, NFE, schedule, sigma range and guidance scale it was distilled on,
so loading checks them and refuses a mismatch by name.

A coefficient file is untrusted input (anyone can hand a user one), so reading it is bounded
before it is parsed: the file size and the header length are checked first, every metadata
field is type- and range-checked before any work depends on it (an NFE of 10**12 would
otherwise mean hours of bookkeeping, a ``gamma_max`` of 1e308 all-NaN samples), and every
tensor must be finite and of the dtype and shape the metadata implies. Each refusal is a
:class:`CoefficientFileError` naming the file, the field and what is allowed.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import attrs
import torch
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save_file

from ..core.adasde import BASE_SOLVERS, N_COEFFS, calls_per_step, count_nfe
from ..errors import SadakitError
from .grid import MAX_END_LOGIT, MAX_GRID_LOGIT, ends_from_logits, grid_from_logits, grid_with_ends

METADATA_KEY = "sadakit.adasde"
FORMAT_VERSION = 1
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample", "flow")

# Bounds on what a file may ask for. Generous for every real use (a few-step solver; the
# largest file anyone has needed is a 32-call teacher), tight enough that nothing a file says
# can make loading slow or sampling non-finite.
MAX_NFE = 500
MAX_FILE_BYTES = 1 << 20  # 500 steps of coefficients and grid are ~12 KB
MAX_HEADER_BYTES = 1 << 16  # the shipped files' headers are ~1 KB
SIGMA_BOUNDS = (1e-5, 1e5)  # VE noise levels: VP zero-SNR schedules reach 4096, flow grids 99
GAMMA_MAX_BOUND = 1.0  # churn at most doubles the noise level of a step
GUIDANCE_BOUNDS = (0.0, 100.0)
MAX_NAME_CHARS = 512  # model ids: hub ids, local path names, testbed names
MAX_LABEL_CHARS = 64  # schedule names, version strings
MAX_TRAINING_ENTRIES = 64
TENSOR_DTYPES = {"raw": ("F32", torch.float32), "sigmas": ("F64", torch.float64)}
#: how close the grid's ends must be to the metadata's sigma_max / sigma_min (relative)
GRID_END_RTOL = 1e-5
#: how close a learned grid must be to the grid its ``grid_logits`` give (relative, per node)
LEARNED_GRID_RTOL = 1e-6
FINGERPRINT_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,127}:[0-9a-f]{64}")
_LABEL_PATTERN = re.compile(r"[A-Za-z0-9_.+:-]{1,%d}" % MAX_LABEL_CHARS)


class CoefficientMismatchError(SadakitError, ValueError):
    """A coefficient file does not fit the pipeline or request it is used with."""


class CoefficientFileError(CoefficientMismatchError):
    """A coefficient file is unreadable or malformed: the message names the file, the field, what is allowed.

    A subclass of :class:`CoefficientMismatchError` so that code catching "this file cannot be
    used here" keeps catching it; catch this class to tell a broken file from a mismatched one.
    """

    def __init__(self, problem: str, *, path: str | None = None, field: str | None = None) -> None:
        self.problem, self.path, self.field = problem, path, field
        where = f"AdaSDE coefficient file {path}" if path is not None else "AdaSDE coefficients"
        super().__init__(f"{where}: {field + ': ' if field else ''}{problem}")

    def at(self, path: str) -> "CoefficientFileError":
        """The same problem, now naming the file it was found in."""
        return CoefficientFileError(self.problem, path=path, field=self.field)


class OtherModelError(CoefficientMismatchError):
    """A coefficient file was distilled for another model than the pipeline's (see ``identity``)."""


def _sadakit_version() -> str:
    try:
        from importlib.metadata import version

        return version("sadakit")
    except Exception:  # not installed as a distribution (e.g. run from a checkout)
        return "0.1.0"


# --------------------------------------------------------------------------------------
# Field rules: one table, used by the constructor (in memory) and by the loader (files)
# --------------------------------------------------------------------------------------


def _short(value: Any, limit: int = 60) -> str:
    """``repr`` cut to ``limit`` characters: a hostile value must not make a hostile message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite_in(value: Any, lo: float, hi: float) -> bool:
    if not _is_number(value):
        return False
    if isinstance(value, int):  # no float(): 10**400 does not fit one
        return lo <= value <= hi
    return math.isfinite(value) and lo <= value <= hi


def _printable_text(value: Any, max_chars: int) -> bool:
    return isinstance(value, str) and 0 < len(value) <= max_chars and value.isprintable()


def _training_ok(value: Any) -> bool:
    """Provenance only: a flat dict of short keys and JSON scalars (NaN allowed: a diverged loss)."""
    if not isinstance(value, dict) or len(value) > MAX_TRAINING_ENTRIES:
        return False
    for key, item in value.items():
        if not _printable_text(key, MAX_LABEL_CHARS):
            return False
        if isinstance(item, str):
            if len(item) > MAX_NAME_CHARS or not item.isprintable():
                return False
        elif item is not None and not isinstance(item, (bool, int, float)):
            return False
    return True


def _grid_logits_ok(value: Any) -> bool:
    """A learned grid's parameters: null, or a list of finite numbers within +-MAX_GRID_LOGIT."""
    if value is None:
        return True
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_NFE + 1:
        return False
    return all(_finite_in(v, -MAX_GRID_LOGIT, MAX_GRID_LOGIT) for v in value)


#: The keys of a ``grid_ends`` object (learned ends, sadakit.adasde.grid.grid_with_ends).
GRID_END_KEYS = ("top_logit", "bottom_logit", "sigma_lo", "sigma_hi")


def _grid_ends_ok(value: Any) -> bool:
    """Learned ends: null, or exactly the four numbers of ``GRID_END_KEYS`` within their bounds."""
    if value is None:
        return True
    if not isinstance(value, dict) or set(value) != set(GRID_END_KEYS):
        return False
    logits_ok = all(_finite_in(value[k], -MAX_END_LOGIT, MAX_END_LOGIT) for k in ("top_logit", "bottom_logit"))
    lo, hi = value["sigma_lo"], value["sigma_hi"]
    range_ok = _finite_in(lo, *SIGMA_BOUNDS) and _finite_in(hi, *SIGMA_BOUNDS) and lo < hi
    return logits_ok and range_ok


@dataclass(frozen=True)
class FieldRule:
    """What one metadata field may hold: a predicate and its description for error messages."""

    allowed: str
    ok: Callable[[Any], bool]


def _number_rule(lo: float, hi: float, optional: bool = False) -> FieldRule:
    text = f"a finite number from {lo:g} to {hi:g}" + (", or null" if optional else "")
    return FieldRule(text, lambda v: (optional and v is None) or _finite_in(v, lo, hi))


def _choice_rule(allowed: tuple[str, ...]) -> FieldRule:
    return FieldRule("one of " + ", ".join(map(repr, allowed)), lambda v: isinstance(v, str) and v in allowed)


FIELD_RULES: dict[str, FieldRule] = {
    "model": FieldRule(f"a printable string of 1 to {MAX_NAME_CHARS} characters", lambda v: _printable_text(v, MAX_NAME_CHARS)),
    "nfe": FieldRule(f"an integer from 1 to {MAX_NFE}",
                     lambda v: isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_NFE),
    "solver": _choice_rule(BASE_SOLVERS),
    "analytic_first_step": FieldRule("true or false", lambda v: isinstance(v, bool)),
    "schedule": FieldRule(f"a name of 1 to {MAX_LABEL_CHARS} letters, digits or _.+:-",
                          lambda v: isinstance(v, str) and _LABEL_PATTERN.fullmatch(v) is not None),
    "sigma_min": _number_rule(*SIGMA_BOUNDS),
    "sigma_max": _number_rule(*SIGMA_BOUNDS),
    "gamma_max": _number_rule(0.0, GAMMA_MAX_BOUND),
    "prediction_type": _choice_rule(PREDICTION_TYPES),
    "guidance_scale": _number_rule(*GUIDANCE_BOUNDS, optional=True),
    "training": FieldRule(
        f"an object of at most {MAX_TRAINING_ENTRIES} entries, short printable keys, values null, true/false, "
        f"numbers or printable strings of at most {MAX_NAME_CHARS} characters",
        _training_ok,
    ),
    "sadakit_version": FieldRule(f"a printable string of 1 to {MAX_LABEL_CHARS} characters",
                                 lambda v: _printable_text(v, MAX_LABEL_CHARS)),
    "format_version": FieldRule(f"an integer from 1 to {FORMAT_VERSION} (a newer format needs a newer sadakit)",
                                lambda v: isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= FORMAT_VERSION),
    "model_fingerprint": FieldRule("null or '<DenoiserClass>:<64 hex digits>' (sadakit.adasde.model_fingerprint)",
                                   lambda v: v is None or (isinstance(v, str) and FINGERPRINT_PATTERN.fullmatch(v) is not None)),
    "grid_logits": FieldRule(f"null or a list of one finite number from {-MAX_GRID_LOGIT:g} to {MAX_GRID_LOGIT:g} per step "
                             "(the learned grid's softmax logits, sadakit.adasde.grid)", _grid_logits_ok),
    "grid_ends": FieldRule(f"null or an object of exactly {', '.join(GRID_END_KEYS)}: the two logits finite numbers "
                           f"from {-MAX_END_LOGIT:g} to {MAX_END_LOGIT:g}, the sigma range finite numbers from "
                           f"{SIGMA_BOUNDS[0]:g} to {SIGMA_BOUNDS[1]:g} with sigma_lo < sigma_hi "
                           "(the learned ends, sadakit.adasde.grid.grid_with_ends)", _grid_ends_ok),
}
#: Fields added after format 1's first release: files without them still load (``model_fingerprint``:
#: the model is then not checked; ``grid_logits``: the grid was not learned; ``grid_ends``: its ends were not).
OPTIONAL_FIELDS = ("model_fingerprint", "grid_logits", "grid_ends")
#: Fields every file written by ``save_coefficients`` holds (format 1 from its first release).
REQUIRED_FIELDS = tuple(name for name in FIELD_RULES if name not in OPTIONAL_FIELDS)


def _check_field(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    rule = FIELD_RULES[attribute.name]
    if not rule.ok(value):
        raise CoefficientFileError(f"{_short(value)} is not allowed; allowed: {rule.allowed}",
                                   field=f"metadata field {attribute.name!r}")


def _logits_to_floats(value: Any) -> Any:
    """JSON may write a logit 0.0 as 0; anything but a list of numbers is left for the rule to judge."""
    if isinstance(value, (list, tuple)) and all(_is_number(v) for v in value):
        return [_int_to_float(v) for v in value]
    return value


def _ends_to_floats(value: Any) -> Any:
    """The numbers of a ``grid_ends`` object as floats (JSON may write 0.0 as 0); anything else left to the rule."""
    if isinstance(value, dict):
        return {k: _int_to_float(v) for k, v in value.items()}
    return value


def _int_to_float(value: Any) -> Any:
    """JSON writes 80.0 as 80 in some writers; anything else is left for the rule to judge."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) <= 2**53:
        return float(value)
    return value


def _optional_int_to_float(value: Any) -> Any:
    return None if value is None else _int_to_float(value)


#: Solver forms whose step can go to sigma 0 (one call, the sample is the last denoised estimate).
ENDS_SOLVERS = ("euler", "multistep")


def steps_for(nfe: int, solver: str, analytic_first_step: bool) -> int | None:
    """Solver steps giving exactly ``nfe`` calls, in O(1) (``None`` if none does).

    The core's ``steps_for_nfe`` searches every step count, which is fine for trusted
    arguments but quadratic in a number a file chooses.
    """
    first = calls_per_step(solver, True, analytic_first_step)
    rest = calls_per_step(solver, False, analytic_first_step)
    if nfe < first or (nfe - first) % rest:
        return None
    steps = 1 + (nfe - first) // rest
    return steps if count_nfe(steps, solver, analytic_first_step) == nfe else None


# --------------------------------------------------------------------------------------
# Metadata and the in-memory file
# --------------------------------------------------------------------------------------


def _field(default: Any = attrs.NOTHING, factory: Any = None, converter: Any = None) -> Any:
    if factory is not None:
        return attrs.field(factory=factory, validator=_check_field, converter=converter)
    return attrs.field(default=default, validator=_check_field, converter=converter)


@attrs.frozen
class CoefficientMetadata:
    """What a coefficient file was distilled for (stored as JSON in the safetensors header).

    ``model`` is a free identity string (hub id, local path name or testbed config) compared
    verbatim. ``model_fingerprint`` identifies the denoiser by its class and configuration
    (:func:`sadakit.adasde.model_fingerprint`), so a file for another model is refused even
    when the names say nothing; ``None`` in files written before it was recorded.
    ``prediction_type`` is the model's output kind ("flow" for flow matching), which decides
    how the scheduler talks to the model. ``training`` records the distillation settings
    (teacher factor, iterations, lr, batch, seed, loss) for provenance only. Every field is
    checked against :data:`FIELD_RULES` on construction.
    """

    model: str = _field()
    nfe: int = _field()
    solver: str = _field("adasde")
    analytic_first_step: bool = _field(True)
    schedule: str = _field("karras")
    sigma_min: float = _field(0.002, converter=_int_to_float)
    sigma_max: float = _field(80.0, converter=_int_to_float)
    gamma_max: float = _field(0.3, converter=_int_to_float)
    prediction_type: str = _field("epsilon")
    guidance_scale: float | None = _field(None, converter=_optional_int_to_float)
    training: dict = _field(factory=dict)
    sadakit_version: str = _field(factory=_sadakit_version)
    format_version: int = _field(FORMAT_VERSION)
    model_fingerprint: str | None = _field(None)
    grid_logits: list[float] | None = _field(None, converter=_logits_to_floats)
    grid_ends: dict[str, float] | None = _field(None, converter=_ends_to_floats)

    def __attrs_post_init__(self) -> None:
        if not self.sigma_min < self.sigma_max:
            raise CoefficientFileError(
                f"sigma_min={self.sigma_min:g} must be below sigma_max={self.sigma_max:g}", field="metadata field 'sigma_min'"
            )
        if self.solver == "multistep" and self.analytic_first_step:
            raise CoefficientFileError(
                "true is not allowed with solver='multistep' (it has no analytic first step); allowed: false",
                field="metadata field 'analytic_first_step'",
            )
        if steps_for(self.nfe, self.solver, self.analytic_first_step) is None:
            reachable = [count_nfe(s, self.solver, self.analytic_first_step) for s in range(1, 6)]
            raise CoefficientFileError(
                f"{self.nfe} is not reachable with solver={self.solver!r}, analytic_first_step="
                f"{self.analytic_first_step}; allowed: {', '.join(map(str, reachable))}, ...",
                field="metadata field 'nfe'",
            )
        if self.grid_ends is not None:
            self._check_learned_ends()
        elif self.grid_logits is not None and len(self.grid_logits) != self.steps:
            raise CoefficientFileError(
                f"has {len(self.grid_logits)} entries; allowed: one per step ({self.steps} for nfe={self.nfe} with "
                f"solver={self.solver!r})", field="metadata field 'grid_logits'",
            )

    def _check_learned_ends(self) -> None:
        """Learned ends: the Euler or multistep form (only their steps reach sigma 0), interior logits, ends as stated."""
        where = "metadata field 'grid_ends'"
        if self.solver not in ENDS_SOLVERS:
            raise CoefficientFileError(f"needs solver='euler' or 'multistep' (the last step goes to sigma 0, which only "
                                       f"their one-call steps can take); the file has solver={self.solver!r}", field=where)
        if self.steps < 2:
            raise CoefficientFileError(f"needs at least 2 steps (a top and a bottom node); nfe={self.nfe} gives "
                                       f"{self.steps}", field=where)
        if self.grid_logits is None or len(self.grid_logits) != self.steps - 1:
            have = "none" if self.grid_logits is None else f"{len(self.grid_logits)} entries"
            raise CoefficientFileError(
                f"has {have}; with grid_ends allowed: one per interval between the top and the bottom "
                f"({self.steps - 1} for nfe={self.nfe})", field="metadata field 'grid_logits'")
        e = self.grid_ends
        top, bottom = ends_from_logits(torch.tensor([e["top_logit"], e["bottom_logit"]], dtype=torch.float64),
                                       e["sigma_lo"], e["sigma_hi"])
        for name, want, have in (("sigma_max", float(top), self.sigma_max), ("sigma_min", float(bottom), self.sigma_min)):
            if not math.isclose(have, want, rel_tol=GRID_END_RTOL):
                raise CoefficientFileError(f"{have:.6g}, but metadata field 'grid_ends' places it at {want:.6g}",
                                           field=f"metadata field {name!r}")

    @property
    def learned_grid(self) -> torch.Tensor | None:
        """The grid ``grid_logits`` describe (float64), or ``None`` for a file whose grid was not learned."""
        if self.grid_logits is None:
            return None
        logits = torch.tensor(self.grid_logits, dtype=torch.float64)
        if self.grid_ends is not None:
            e = self.grid_ends
            ends = torch.tensor([e["top_logit"], e["bottom_logit"]], dtype=torch.float64)
            return grid_with_ends(logits, ends, e["sigma_lo"], e["sigma_hi"])
        return grid_from_logits(logits, self.sigma_max, self.sigma_min)

    @property
    def ends_at_zero(self) -> bool:
        """True when the grid's last step goes to sigma 0 (learned ends): ``sigma_min`` is then the last positive node."""
        return self.grid_ends is not None

    @property
    def steps(self) -> int:
        """Number of solver steps implied by the NFE and the solver."""
        steps = steps_for(self.nfe, self.solver, self.analytic_first_step)
        assert steps is not None  # checked on construction
        return steps

    def to_json(self) -> str:
        return json.dumps(attrs.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, path: str | None = None) -> "CoefficientMetadata":
        """Parse and check the header's metadata; every refusal names ``path`` and the field."""
        try:
            data = _parse_json(text)
        except ValueError as exc:
            raise CoefficientFileError(f"is not valid JSON ({_short(str(exc), 120)})", path=path,
                                       field=f"header entry {METADATA_KEY!r}") from None
        try:
            return cls(**_known_fields(data))
        except CoefficientFileError as exc:
            raise (exc.at(path) if path is not None else exc) from None


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """JSON objects with a repeated key are ambiguous (readers disagree on which one wins)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {_short(key)} appears twice")
        out[key] = value
    return out


def _parse_json(text: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_reject_duplicates)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _known_fields(data: Any) -> dict[str, Any]:
    """The metadata object's fields, refusing unknown keys (a newer format) and missing ones."""
    if not isinstance(data, dict):
        raise CoefficientFileError(f"must be a JSON object, got {type(data).__name__}", field=f"header entry {METADATA_KEY!r}")
    unknown = sorted(set(data) - set(FIELD_RULES), key=str)
    if unknown:
        raise CoefficientFileError(
            f"has fields this sadakit does not know: {_short(unknown, 200)}; the file was written by sadakit "
            f"{_short(data.get('sadakit_version', '?'))}; allowed fields: {', '.join(FIELD_RULES)}",
            field="metadata",
        )
    missing = [name for name in REQUIRED_FIELDS if name not in data]
    if missing:
        raise CoefficientFileError(f"lacks fields {missing}; every file written by save_coefficients has them",
                                   field="metadata")
    return data


def _grid_problem(sigmas: torch.Tensor, meta: CoefficientMetadata) -> str | None:
    """Why ``sigmas`` is not the grid ``meta`` describes (``None``: it is)."""
    if not bool(torch.isfinite(sigmas).all()):
        return "must be finite"
    positive = sigmas[:-1] if meta.ends_at_zero else sigmas
    if meta.ends_at_zero and float(sigmas[-1]) != 0.0:
        return f"ends at {float(sigmas[-1]):.6g}; with metadata field 'grid_ends' it must end at exactly 0"
    if not bool((positive > 0).all()):
        return "must be > 0" + (" before its last node" if meta.ends_at_zero else "")
    if not bool((sigmas[:-1] > sigmas[1:]).all()):
        return "must be strictly decreasing"
    for end, name, want in ((float(positive[0]), "sigma_max", meta.sigma_max), (float(positive[-1]), "sigma_min", meta.sigma_min)):
        if not math.isclose(end, want, rel_tol=GRID_END_RTOL):
            return f"ends at {end:.6g}, but the metadata says {name}={want:.6g}"
    learned = meta.learned_grid
    if learned is not None:
        nodes = slice(0, len(sigmas) - 1) if meta.ends_at_zero else slice(0, len(sigmas))  # the 0 is checked above
        worst = float(((sigmas[nodes] - learned[nodes]).abs() / learned[nodes]).max())
        if worst > LEARNED_GRID_RTOL:
            return (f"is not the grid of the metadata's grid_logits (a node differs by {worst:.3g} relative; "
                    f"allowed: {LEARNED_GRID_RTOL:g}): the grid or metadata field 'grid_logits' was changed")
    return None


@attrs.frozen
class CoefficientFile:
    """Raw coefficients ``(steps, 4)`` float32, the sigma grid ``(steps + 1,)`` float64, metadata.

    Checked on construction (from a file, a scheduler config or a distillation alike): shapes
    and dtypes as the metadata implies, every value finite, the grid positive, strictly
    decreasing and ending at the metadata's sigma range.
    """

    raw: torch.Tensor
    sigmas: torch.Tensor
    meta: CoefficientMetadata

    def __attrs_post_init__(self) -> None:
        steps = self.meta.steps
        if tuple(self.raw.shape) != (steps, N_COEFFS):
            raise CoefficientFileError(
                f"shape {tuple(self.raw.shape)}, but nfe={self.meta.nfe} with solver={self.meta.solver!r} needs "
                f"({steps}, {N_COEFFS})", field="raw coefficients"
            )
        if tuple(self.sigmas.shape) != (steps + 1,):
            raise CoefficientFileError(f"shape {tuple(self.sigmas.shape)}; expected ({steps + 1},) for {steps} steps",
                                       field="sigma grid")
        for name, tensor in (("raw", self.raw), ("sigmas", self.sigmas)):
            if tensor.dtype != TENSOR_DTYPES[name][1]:
                raise CoefficientFileError(f"dtype {tensor.dtype}; allowed: {TENSOR_DTYPES[name][1]}", field=f"tensor {name!r}")
        if not bool(torch.isfinite(self.raw).all()):
            bad = int((~torch.isfinite(self.raw)).sum())
            raise CoefficientFileError(f"{bad} of {self.raw.numel()} values are NaN or infinite; allowed: finite values",
                                       field="raw coefficients")
        problem = _grid_problem(self.sigmas, self.meta)
        if problem is not None:
            raise CoefficientFileError(problem, field="sigma grid")


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


# --------------------------------------------------------------------------------------
# Reading a file: bounded, checked before parsed, tensors through safetensors only
# --------------------------------------------------------------------------------------


def _read_bounded(path: str) -> bytes:
    """The file's bytes, after checking it is a regular file of a plausible size."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise CoefficientFileError("does not exist", path=path) from None
    except OSError as exc:
        raise CoefficientFileError(f"cannot be read ({exc.strerror or exc})", path=path) from None
    if stat.S_ISDIR(info.st_mode):
        raise CoefficientFileError("is a directory; pass the .safetensors file inside it", path=path)
    if not stat.S_ISREG(info.st_mode):
        raise CoefficientFileError("is not a regular file", path=path)
    if info.st_size == 0:
        raise CoefficientFileError("is empty (0 bytes)", path=path)
    if info.st_size > MAX_FILE_BYTES:
        raise CoefficientFileError(f"is {info.st_size} bytes; a coefficient file is at most {MAX_FILE_BYTES} bytes",
                                   path=path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise CoefficientFileError(f"cannot be read ({exc.strerror or exc})", path=path) from None
    if len(data) > MAX_FILE_BYTES:
        raise CoefficientFileError(f"grew beyond {MAX_FILE_BYTES} bytes while being read", path=path)
    return data


def _read_header(path: str, data: bytes) -> tuple[dict[str, Any], int]:
    """The safetensors header (a JSON object) and the offset where the tensor bytes start."""
    if len(data) < 8:
        raise CoefficientFileError(
            f"is {len(data)} bytes, shorter than the 8-byte safetensors header length: truncated or not a safetensors file",
            path=path,
        )
    n = int.from_bytes(data[:8], "little")
    if n > MAX_HEADER_BYTES:
        raise CoefficientFileError(f"declares a safetensors header of {n} bytes (at most {MAX_HEADER_BYTES} allowed): "
                                   "not a safetensors file, or corrupted", path=path)
    if 8 + n > len(data):
        raise CoefficientFileError(f"declares a safetensors header of {n} bytes, but only {len(data) - 8} follow: truncated",
                                   path=path)
    try:
        header = _parse_json(data[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CoefficientFileError(f"its safetensors header is not valid JSON ({_short(str(exc), 120)}): "
                                   "not a safetensors file, or corrupted", path=path) from None
    if not isinstance(header, dict):
        raise CoefficientFileError("its safetensors header is not a JSON object: not a safetensors file", path=path)
    return header, 8 + n


def _metadata(path: str, header: dict[str, Any]) -> CoefficientMetadata:
    """The checked sadakit metadata of a parsed header."""
    entries = header.get("__metadata__") or {}
    if not isinstance(entries, dict) or not all(isinstance(v, str) for v in entries.values()):
        raise CoefficientFileError("must map names to strings", path=path, field="safetensors header '__metadata__'")
    if METADATA_KEY not in entries:
        raise CoefficientFileError(
            f"not a sadakit AdaSDE coefficient file: its safetensors header has no {METADATA_KEY!r} entry "
            f"(keys: {_short(sorted(entries), 200)})", path=path,
        )
    # every other __metadata__ entry ("format": "pt", a converter's notes) is ignored on purpose
    return CoefficientMetadata.from_json(entries[METADATA_KEY], path)


def _check_entry(path: str, name: str, entry: Any, shape: tuple[int, ...]) -> tuple[int, int]:
    """One tensor's header entry against the dtype and shape the metadata implies; its byte range."""
    where = f"tensor {name!r}"
    if not isinstance(entry, dict):
        raise CoefficientFileError("header entry is not an object", path=path, field=where)
    dtype = TENSOR_DTYPES[name][0]
    if entry.get("dtype") != dtype:
        raise CoefficientFileError(f"dtype {_short(entry.get('dtype'))}; allowed: {dtype}", path=path, field=where)
    if entry.get("shape") != list(shape):
        raise CoefficientFileError(f"shape {_short(entry.get('shape'))}; the metadata's nfe and solver need {list(shape)}",
                                   path=path, field=where)
    offsets = entry.get("data_offsets")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
        raise CoefficientFileError(f"data_offsets {_short(offsets)} is not a pair of integers", path=path, field=where)
    return offsets[0], offsets[1]


def _check_tensor_entries(path: str, header: dict[str, Any], meta: CoefficientMetadata, payload: int) -> None:
    """Exactly ``raw`` and ``sigmas``, declared as the metadata implies, covering the payload exactly."""
    names = set(header) - {"__metadata__"}
    missing = sorted({"raw", "sigmas"} - names)
    if missing:
        raise CoefficientFileError(f"lacks tensors {missing}; has {_short(sorted(names), 200)}", path=path)
    extra = sorted(names - {"raw", "sigmas"})
    if extra:
        raise CoefficientFileError(f"holds tensors {_short(extra, 200)}; allowed: only 'raw' and 'sigmas'", path=path)
    steps = meta.steps
    ranges = sorted([
        _check_entry(path, "raw", header["raw"], (steps, N_COEFFS)) + (N_COEFFS * steps * 4,),
        _check_entry(path, "sigmas", header["sigmas"], (steps + 1,)) + ((steps + 1) * 8,),
    ])
    cursor = 0
    for start, end, size in ranges:
        if start != cursor or end - start != size:
            raise CoefficientFileError(f"tensor byte ranges {[r[:2] for r in ranges]} do not tile the data "
                                       f"({payload} bytes): corrupted", path=path)
        cursor = end
    if cursor != payload:
        raise CoefficientFileError(f"has {payload} bytes of tensor data, its header describes {cursor}: "
                                   f"{'truncated' if payload < cursor else 'trailing bytes'}", path=path)


def _decode(path: str, data: bytes) -> dict[str, torch.Tensor]:
    """The tensors, decoded by safetensors (no pickle anywhere); any refusal names the file."""
    try:
        return load_safetensors_bytes(data)
    except Exception as exc:  # SafetensorError and friends carry no path
        raise CoefficientFileError(f"safetensors cannot decode it ({_short(str(exc), 120)})", path=path) from None


def load_coefficients(path: str | os.PathLike) -> CoefficientFile:
    """Read a coefficient file (tensors on CPU), checking everything before it is used.

    Order: the file (exists, regular, at most :data:`MAX_FILE_BYTES`), the header length, the
    header JSON, the metadata fields, the tensor entries against the metadata, then the tensor
    values (finite, grid consistent). Raises :class:`CoefficientFileError` naming the file.
    """
    path = os.fspath(path)
    data = _read_bounded(path)
    header, start = _read_header(path, data)
    meta = _metadata(path, header)
    _check_tensor_entries(path, header, meta, len(data) - start)
    tensors = _decode(path, data)
    try:
        return CoefficientFile(tensors["raw"], tensors["sigmas"], meta)
    except CoefficientFileError as exc:
        raise exc.at(path) from None


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
