"""Tune SADA to a fidelity target: the cheapest budget that holds it, saved as a small preset.

``tune(pipe, prompts, target=40)`` generates every calibration (prompt, seed) at the full step
count, then tries ``SADAConfig(budget=b)`` from the cheapest ``b`` up, each in a few plan shapes
(:data:`PLAN_SHAPES`), and returns the first for
which a fraction ``coverage`` (0.9) of the calibration outputs is at least ``target`` dB PSNR
from its full-step output (per output row, over the reference's range; latents where the
pipeline can return them, so one rule serves images, audio and video). A quantile and not the
worst row: on the analytic testbed a few samples in a hundred flip to another mixture component
at any budget, so a worst-case rule measured on a few seeds does not carry over to the next
ones, while the 10th percentile of 128 rows moves by about 1 dB between seeds. Cheapest first, because fidelity is not monotone in the
budget (docs/frontier.md): a bisection could skip the fastest setting that holds.

A :class:`Preset` records what it was tuned for (pipeline, model, scheduler, steps, target) and
refuses, naming the field, to configure anything else. JSON, never a pickle.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import attrs
import torch

from .config import SADAConfig
from .errors import SadakitError

PRESET_FORMAT = "sadakit.preset"
PRESET_VERSION = 1
#: Budgets tried, cheapest first (fractions of the denoiser calls computed).
DEFAULT_BUDGETS = (0.12, 0.16, 0.2, 0.25, 0.3, 0.33, 0.36, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8, 0.9)
#: Shapes of the budget plan tried at each budget, in order (SADAConfig fields over ``base``).
#: Why more than one: which plan keeps a model closest depends on the model (docs/frontier.md,
#: "plan shapes"): the UNet models keep 3-10 dB more with the warm-up and the last two calls
#: computed, the flow-matching Flux model up to 17 dB more on an even grid; at
#: ``budget_order=0`` an even plan without final calls is "fewer steps" on a subgrid of the schedule.
PLAN_SHAPES: tuple[dict, ...] = (
    {},
    {"budget_order": 0},
    {"budget_spread": "even", "final_calls": 0},
    {"budget_spread": "even", "final_calls": 0, "budget_order": 0},
)

Generate = Callable[[Any, Any, int, int], torch.Tensor]


class PresetMismatchError(SadakitError, ValueError):
    """A preset was made for another pipeline, model or scheduler."""


class TargetNotReachedError(SadakitError, RuntimeError):
    """No budget tried held the target on every calibration case."""


@attrs.frozen(kw_only=True)
class Preset:
    """A tuned SADAConfig and what it was tuned for."""

    config: SADAConfig
    pipeline: str  # the pipeline class
    model: str  # the model's name or path ("" when the pipeline has none)
    scheduler: str  # the scheduler class
    steps: int
    target_db: float
    coverage: float  # fraction of outputs that must hold the target
    held: float  # fraction of the calibration outputs that held it at the returned budget
    calibration_outputs: int

    def config_for(self, pipe: Any, steps: int | None = None) -> SADAConfig:
        """The config, if ``pipe`` (and ``steps``, when given) is what the preset was tuned for."""
        actual = identity(pipe)
        for name in ("pipeline", "model", "scheduler"):
            if getattr(self, name) != actual[name]:
                raise PresetMismatchError(
                    f"sadakit preset: tuned for {name} {getattr(self, name)!r}, this pipeline has {actual[name]!r}; "
                    "tune it again for this pipeline (sadakit.tune / sadakit tune)"
                )
        if steps is not None and steps != self.steps:
            raise PresetMismatchError(
                f"sadakit preset: tuned for steps {self.steps}, asked for {steps}; its budget holds the target only there"
            )
        return self.config

    def to_json(self) -> str:
        fields = attrs.asdict(self, recurse=False)
        fields["config"] = attrs.asdict(self.config)
        return json.dumps({"format": PRESET_FORMAT, "version": PRESET_VERSION, **fields}, indent=2)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(self.to_json() + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Preset":
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"sadakit preset {str(path)!r} is not readable JSON: {err}") from None
        if not isinstance(data, dict) or data.get("format") != PRESET_FORMAT:
            raise ValueError(f"sadakit preset {str(path)!r}: not a sadakit preset (format {PRESET_FORMAT!r} expected)")
        if data.get("version") != PRESET_VERSION:
            raise ValueError(f"sadakit preset {str(path)!r}: version {data.get('version')!r}, this sadakit reads {PRESET_VERSION}")
        known = {f.name for f in attrs.fields(cls)}
        missing = sorted(known - set(data))
        if missing:
            raise ValueError(f"sadakit preset {str(path)!r}: missing field(s) {', '.join(missing)}")
        config_fields = {f.name for f in attrs.fields(SADAConfig)}
        unknown = sorted(set(data["config"]) - config_fields)
        if unknown:
            raise ValueError(f"sadakit preset {str(path)!r}: unknown SADAConfig field(s) {', '.join(unknown)}")
        return cls(**{**{k: data[k] for k in known}, "config": SADAConfig(**data["config"])})


def identity(pipe: Any) -> dict[str, str]:
    """What a preset is bound to: pipeline class, model (hub id, or a local directory's name, so
    a preset moves with its model between machines), scheduler class."""
    config = getattr(pipe, "config", None)
    model = str(getattr(pipe, "name_or_path", None) or (config.get("_name_or_path", "") if isinstance(config, dict) else "") or "")
    if Path(model).is_absolute():
        model = Path(model).name
    return {"pipeline": type(pipe).__name__, "model": model,
            "scheduler": type(getattr(pipe, "scheduler", None)).__name__}


def default_generate(call_kwargs: dict | None = None) -> Generate:
    """``pipe(prompt=..., num_inference_steps=..., generator=seeded)``, its output as a tensor
    (latents when the pipeline accepts ``output_type="latent"``)."""

    def generate(pipe: Any, prompt: Any, seed: int, steps: int) -> torch.Tensor:
        kwargs = {**(call_kwargs or {}), "prompt": prompt, "num_inference_steps": steps,
                  "generator": torch.Generator().manual_seed(seed)}
        params = inspect.signature(pipe.__call__).parameters
        if "output_type" in params and "output_type" not in kwargs:
            kwargs["output_type"] = "latent"
        out = pipe(**kwargs)
        for name in ("images", "audios", "frames", "samples"):
            value = getattr(out, name, None)
            if value is not None:
                return torch.as_tensor(value).float()
        raise TypeError(f"sadakit.tune: {type(pipe).__name__} returned no images, audios, frames or samples; "
                        "pass generate=")

    return generate


def row_psnr_db(test: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """PSNR of each output row over the reference batch's value range (inf where identical)."""
    test, reference = test.float(), reference.float()
    mse = (test - reference).pow(2).reshape(reference.shape[0], -1).mean(dim=1)
    span = float(reference.max() - reference.min()) or 1.0
    return 10.0 * torch.log10(span * span / mse)


def held_fraction(psnrs: torch.Tensor, target: float) -> float:
    """Fraction of rows at or above ``target`` dB."""
    return float((psnrs >= target).float().mean())


def tune(pipe: Any, prompts: Sequence[Any], target: float, *, steps: int = 50, seeds: Iterable[int] = (0,),
         budgets: Sequence[float] = DEFAULT_BUDGETS, coverage: float = 0.9, base: SADAConfig | None = None,
         call_kwargs: dict | None = None, generate: Generate | None = None,
         plan_shapes: Sequence[dict] = PLAN_SHAPES) -> Preset:
    """The cheapest ``SADAConfig(budget=b, **shape)`` (over ``budgets``, cheapest first, then
    ``plan_shapes`` in order, on top of ``base``) for which at least ``coverage`` of the
    calibration outputs are ``target`` dB PSNR or more from their full-step output. The
    pipeline is left unaccelerated. ``plan_shapes=({},)`` searches the budget alone."""
    from .api import accelerate, remove

    if isinstance(target, bool) or not isinstance(target, (int, float)) or not target > 0:
        raise ValueError(f"sadakit.tune: target must be a PSNR in dB > 0, got {target!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise ValueError(f"sadakit.tune: steps must be an integer >= 2, got {steps!r}")
    if isinstance(coverage, bool) or not isinstance(coverage, (int, float)) or not 0 < coverage <= 1:
        raise ValueError(f"sadakit.tune: coverage must be a fraction in (0, 1], got {coverage!r}")
    if not prompts:
        raise ValueError("sadakit.tune: give at least one calibration prompt")
    seeds = list(seeds)
    if not seeds:
        raise ValueError("sadakit.tune: give at least one calibration seed")
    base = base if base is not None else SADAConfig()
    shapes = [dict(shape) for shape in plan_shapes]
    if not shapes:
        raise ValueError("sadakit.tune: plan_shapes must hold at least one shape ({} is the base config's own)")
    candidates = sorted({float(b) for b in budgets})
    fields = {f.name for f in attrs.fields(SADAConfig)}
    for shape in shapes:
        unknown = sorted(set(shape) - fields)
        if unknown or "budget" in shape:
            raise ValueError(f"sadakit.tune: plan shape {shape!r} names {', '.join(unknown) or 'budget'}; "
                             "a shape sets SADAConfig fields other than budget")
    for b in candidates:
        for shape in shapes:
            attrs.evolve(base, budget=b, **shape)  # every configuration is validated before anything runs
    generate = generate or default_generate(call_kwargs)
    cases = [(p, s) for p in prompts for s in seeds]
    remove(pipe)
    references = [generate(pipe, p, s, steps) for p, s in cases]
    tried = []
    for b in candidates:
        shares = []
        for shape in shapes:
            config = attrs.evolve(base, budget=b, **shape)
            accelerate(pipe, config)
            try:
                psnrs = torch.cat([row_psnr_db(generate(pipe, p, s, steps), ref)
                                   for (p, s), ref in zip(cases, references)])
            finally:
                remove(pipe)
            held = held_fraction(psnrs, target)
            shares.append(f"{held:.0%}")
            if held >= coverage:
                return Preset(config=config, **identity(pipe), steps=steps, target_db=float(target),
                              coverage=float(coverage), held=held, calibration_outputs=int(psnrs.numel()))
        tried.append(f"{b:g}: {'/'.join(shares)}")
    raise TargetNotReachedError(f"sadakit.tune: no budget held {target:g} dB on {coverage:.0%} of the calibration "
                                f"outputs (share held per budget, one per plan shape: {', '.join(tried)}); lower the target or add budgets")
