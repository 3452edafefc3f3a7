"""The solver-quality benchmark on the analytic testbed, as extensible tables.

Three registries define a run, and other code adds to them instead of editing the loop:

* ``METHODS``: name -> ``Method`` (how to produce samples for a target NFE from the shared start
  noise). Every diffusers solver in ``solvers.SOLVERS`` is registered here. AdaSDE registers
  its scheduler through ``solvers.register_solver`` or its own ``Method``; SADA registers
  through ``register_sada_methods`` (the extension point below).
* ``METRICS``: column name -> function of (context, run output).
* configurations: ``configs.CONFIGS``.

A ``Method.run`` must return a ``GMMPipelineOutput`` (or None when it cannot meet the NFE):
its ``start_tau``/``start_scale``/``final_sigma`` select the exact reference, and ``nfe``
(counted inside the denoiser's ``forward``) is what the table reports.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch

from . import metrics as M
from .configs import Testbed, get_testbed
from .pipeline import GMMPipelineOutput
from .reference import solve_from_noise
from .solvers import SOLVERS, SolverSpec, make_pipeline

DEFAULT_CONFIGS = ("gmm2d-8", "gmm64-16", "latent-4x16x16", "gmm64-16-err")
DEFAULT_NFES = (3, 5, 7, 9, 20)


@dataclass
class BenchContext:
    """One configuration's shared state: start noise, references (cached per start) and floors."""

    testbed: Testbed
    noise: torch.Tensor
    sw_repeats: int = 8
    ref_rtol: float = 1e-10
    _refs: dict[tuple[float, float, float], torch.Tensor] = field(default_factory=dict)

    def reference(self, out: GMMPipelineOutput) -> torch.Tensor:
        """The exact ODE end from the run's own start (cached: runs share a few starts)."""
        key = (round(out.start_tau, 9), round(out.start_scale, 9), round(out.final_sigma, 9))
        if key not in self._refs:
            self._refs[key] = solve_from_noise(
                self.testbed.denoiser, self.noise, out.start_tau, out.start_scale,
                sigma_end=out.final_sigma, rtol=self.ref_rtol, atol=self.ref_rtol,
            )
        return self._refs[key]


class Method(Protocol):
    name: str

    def run(self, ctx: BenchContext, nfe: int) -> GMMPipelineOutput | None: ...


@dataclass(frozen=True)
class SolverMethod:
    """A diffusers scheduler around the exact denoiser, with the most steps the NFE allows."""

    spec: SolverSpec

    @property
    def name(self) -> str:
        return self.spec.name

    def run(self, ctx: BenchContext, nfe: int) -> GMMPipelineOutput | None:
        steps = self.spec.nfe_to_steps(nfe)
        if steps < self.spec.min_steps:
            return None
        pipe = make_pipeline(ctx.testbed, self.spec)
        return pipe(num_inference_steps=steps, latents=ctx.noise)


METHODS: dict[str, Method] = {name: SolverMethod(spec) for name, spec in SOLVERS.items()}


def register_method(method: Method) -> Method:
    """Add a row source (AdaSDE, SADA variants)."""
    if method.name in METHODS:
        raise ValueError(f"method {method.name!r} already exists")
    METHODS[method.name] = method
    return method


# -------------------------------------------------------------------------------------------
# Extension point for the SADA comparison (filled by the SADA runtime's owner).
#
# Planned rows, each at equal real NFE against the same reference and start noise:
#   stability-guided skipping vs uniform skipping vs fewer steps without skipping, and the
#   extrapolation variants (x0 Lagrange order 1-3, raw-output extrapolation), for Euler,
#   DPM-Solver++ and flow-matching Euler. A SADA method builds ``make_pipeline(tb, solver)``,
#   accelerates ``pipe`` (hooks on ``pipe.denoiser``), runs more scheduler steps than the NFE
#   budget and returns the output: its ``nfe`` counts only evaluations that really ran.
# -------------------------------------------------------------------------------------------
SADA_METHOD_FACTORIES: list[Callable[[], list[Method]]] = []


def register_sada_methods(factory: Callable[[], list[Method]]) -> None:
    """Register a function returning SADA ``Method`` rows; called when the benchmark starts."""
    SADA_METHOD_FACTORIES.append(factory)


def sada_methods() -> list[Method]:
    return [m for factory in SADA_METHOD_FACTORIES for m in factory()]


# -------------------------------------------------------------------------------------------
# Metrics: column -> f(context, output, reference)
# -------------------------------------------------------------------------------------------
MetricFn = Callable[[BenchContext, GMMPipelineOutput, torch.Tensor], "float | M.Estimate"]

METRICS: dict[str, MetricFn] = {
    "rmse": lambda ctx, out, ref: M.rmse(out.samples, ref),
    "rmse_median": lambda ctx, out, ref: float(M.per_sample_rmse(out.samples, ref).median()),
    "mode_agree": lambda ctx, out, ref: M.mode_agreement(ctx.testbed.mixture, out.samples, ref),
    "sw": lambda ctx, out, ref: M.distribution_distance(ctx.testbed.mixture, out.samples, ctx.sw_repeats),
    "loglik": lambda ctx, out, ref: M.mean_log_likelihood(ctx.testbed.mixture, out.samples),
}


@dataclass
class Row:
    config: str
    method: str
    nfe_target: int
    nfe: int
    values: dict[str, float | M.Estimate]
    seconds: float

    def as_json(self) -> dict:
        out = {"config": self.config, "method": self.method, "nfe_target": self.nfe_target, "nfe": self.nfe,
               "seconds": round(self.seconds, 4)}
        for k, v in self.values.items():
            out[k] = {"mean": v.mean, "ci95": v.ci95, "repeats": v.repeats} if isinstance(v, M.Estimate) else v
        return out


@dataclass
class ConfigSummary:
    """Per-configuration baselines: the exact-sample floor of SW and the truth's log-likelihood."""

    config: str
    n_samples: int
    sw_floor: M.Estimate
    loglik_true: float


def make_context(name: str, n_samples: int, seed_offset: int = 0, **kwargs) -> BenchContext:
    """The configuration's testbed and its start noise (seeded by the config's own seed)."""
    tb = get_testbed(name)
    g = torch.Generator().manual_seed(tb.seed * 1000 + 17 + seed_offset)
    noise = torch.randn((n_samples, *tb.data_shape), generator=g, dtype=torch.float64)
    return BenchContext(tb, noise, **kwargs)


def summarize(ctx: BenchContext) -> ConfigSummary:
    mix = ctx.testbed.mixture
    n = ctx.noise.shape[0]
    g = torch.Generator().manual_seed(99)
    return ConfigSummary(
        ctx.testbed.name, n, M.distance_floor(mix, n, ctx.sw_repeats),
        M.mean_log_likelihood(mix, mix.sample(max(n, 2048), generator=g)),
    )


def run_benchmark(
    configs: tuple[str, ...] = DEFAULT_CONFIGS,
    nfes: tuple[int, ...] = DEFAULT_NFES,
    methods: list[str] | None = None,
    n_samples: int = 512,
    sw_repeats: int = 8,
    metrics: dict[str, MetricFn] | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[list[Row], list[ConfigSummary]]:
    """Every (config, method, NFE) with the chosen metrics; SADA rows included when registered."""
    metrics = METRICS if metrics is None else metrics
    chosen = [METHODS[m] for m in methods] if methods is not None else list(METHODS.values())
    if methods is None:
        chosen += sada_methods()
    rows, summaries = [], []
    for name in configs:
        ctx = make_context(name, n_samples, sw_repeats=sw_repeats)
        summaries.append(summarize(ctx))
        for method in chosen:
            for nfe in nfes:
                t0 = time.perf_counter()
                out = method.run(ctx, nfe)
                if out is None:
                    continue
                seconds = time.perf_counter() - t0
                ref = ctx.reference(out)
                values = {k: fn(ctx, out, ref) for k, fn in metrics.items()}
                rows.append(Row(name, method.name, nfe, out.nfe, values, seconds))
                if log is not None:
                    log(f"{name} {method.name} nfe={out.nfe} rmse={values.get('rmse', math.nan):.4g}")
    return rows, summaries


def _fmt(v: float | M.Estimate) -> str:
    if isinstance(v, M.Estimate):
        return f"{v.mean:.3f} ± {v.ci95:.3f}"
    return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.3e}"


def markdown_tables(rows: list[Row], summaries: list[ConfigSummary]) -> str:
    """One Markdown table per configuration (rows: method x NFE)."""
    parts = []
    for s in summaries:
        sub = [r for r in rows if r.config == s.config]
        if not sub:
            continue
        keys = list(sub[0].values)
        parts.append(
            f"### {s.config} (n = {s.n_samples}; SW floor between exact sample sets: {s.sw_floor}; "
            f"true log-lik/dim: {s.loglik_true:.3f})\n"
        )
        parts.append("| method | NFE | " + " | ".join(keys) + " |")
        parts.append("|---|---:|" + "---:|" * len(keys))
        for r in sub:
            parts.append(f"| {r.method} | {r.nfe} | " + " | ".join(_fmt(r.values[k]) for k in keys) + " |")
        parts.append("")
    return "\n".join(parts)
