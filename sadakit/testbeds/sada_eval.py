"""SADA on the analytic testbed: how close each skipping strategy stays, at what NFE.

Every run starts from the same noise as the unaccelerated N-step run. Two distances per run:
to the N-step baseline output (what SADA promises to preserve) and to the exact ODE solution
(``reference.solve_from_noise``). NFE is the mean number of calls computed per sample
(SADA decides per sample). The variants are kept in one table so the benchmark and the tests
share them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import sadakit

from .reference import solve_from_noise
from .solvers import make_pipeline

_BASE = dict(token_sparsity=False, count_flops=False)

VARIANTS: dict[str, sadakit.SADAConfig] = {
    "sada (defaults)": sadakit.SADAConfig(**_BASE),
    "criterion only, x0 order 1": sadakit.SADAConfig.criterion_only(**_BASE),
    "criterion only, x0 order 2": sadakit.SADAConfig.criterion_only(**_BASE, extrapolation_order=2),
    "criterion only, raw output": sadakit.SADAConfig.criterion_only(**_BASE, extrapolation="output"),
    "uniform every 2nd, x0 order 1": sadakit.SADAConfig(**_BASE, late_phase_interval=2, late_phase_order=1),
    "uniform every 2nd, x0 order 2": sadakit.SADAConfig(**_BASE, late_phase_interval=2, late_phase_order=2),
    "uniform every 2nd, x0 order 3": sadakit.SADAConfig(**_BASE, late_phase_interval=2, late_phase_order=3),
    "uniform every 2nd, raw output o2": sadakit.SADAConfig(**_BASE, late_phase_interval=2, extrapolation="output"),
    "uniform every 3rd, x0 order 2": sadakit.SADAConfig(**_BASE, late_phase_interval=3, late_phase_order=2),
    "published schedule (50% on, every 4th, cubic)": sadakit.SADAConfig(
        **_BASE, late_phase_start=0.5, late_phase_interval=4, late_phase_order=3
    ),
}


@dataclass
class SadaRow:
    config: str
    solver: str
    steps: int
    method: str
    nfe: float
    rmse_to_baseline: float
    rmse_to_exact: float


def _median_rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).reshape(a.shape[0], -1).pow(2).mean(1).sqrt().median())


def evaluate(config: str, solver: str, steps: int, n_samples: int = 128, seed: int = 1,
             variants: dict[str, sadakit.SADAConfig] | None = None) -> list[SadaRow]:
    """Baseline, fewer steps at SADA's NFE, and every variant, on one (config, solver, steps)."""
    pipe = make_pipeline(config, solver)
    tb = pipe.testbed
    z = torch.randn(n_samples, *tb.mixture.data_shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    base = pipe(num_inference_steps=steps, latents=z)
    exact = solve_from_noise(tb.denoiser, z, base.start_tau, base.start_scale, sigma_end=base.final_sigma)
    rows = [SadaRow(config, solver, steps, "baseline", float(steps), 0.0, _median_rmse(base.samples, exact))]
    default_nfe = None
    for name, cfg in (variants or VARIANTS).items():
        sadakit.accelerate(pipe, cfg)
        try:
            out = pipe(num_inference_steps=steps, latents=z)
            rep = sadakit.report(pipe)
        finally:
            sadakit.remove(pipe)
        nfe = sum(rep.per_sample_computed) / len(rep.per_sample_computed)
        default_nfe = nfe if default_nfe is None else default_nfe
        rows.append(SadaRow(config, solver, steps, name, nfe, _median_rmse(out.samples, base.samples), _median_rmse(out.samples, exact)))
    k = max(1, round(default_nfe))
    fewer = pipe(num_inference_steps=k, latents=z)
    fewer_exact = solve_from_noise(tb.denoiser, z, fewer.start_tau, fewer.start_scale, sigma_end=fewer.final_sigma)
    rows.insert(1, SadaRow(config, solver, steps, f"fewer steps ({k})", float(fewer.nfe),
                           _median_rmse(fewer.samples, base.samples), _median_rmse(fewer.samples, fewer_exact)))
    return rows


def markdown(rows: list[SadaRow]) -> str:
    lines = ["| config | solver | steps | method | NFE | RMSE to baseline | RMSE to exact ODE |", "|---|---|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.config} | {r.solver} | {r.steps} | {r.method} | {r.nfe:.1f} | {r.rmse_to_baseline:.4f} | {r.rmse_to_exact:.4f} |")
    return "\n".join(lines)
