"""AdaSDE on the analytic Gaussian-mixture testbed, next to the diffusers solvers at equal NFE.

    .venv/bin/python benchmarks/bench_adasde.py --configs gmm2d-8 gmm64-16-err --nfe 3 5 7 9

For every (configuration, NFE) this distils coefficients against the exact (or deliberately
wrong, for ``*-err``) denoiser of the testbed, once with learned churn (``adasde``) and once
with gamma fixed at 0 (``adasde-g0``, the deterministic ablation), then runs them through
``AdaSDEScheduler`` inside the testbed's diffusers-style ``GMMPipeline`` on the same start
noise as every other row. Rows and metrics come from ``sadakit.testbeds.bench`` (its method
registry is the extension point: this script only adds rows). Distilled files are cached in
``--cache`` (resumable); ``--fresh`` distils again. Distillation wall times are printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import attrs
import torch

from sadakit.adasde import AdaSDEScheduler, load_coefficients
from sadakit.adasde.distill import DistillConfig, distill
from sadakit.testbeds import bench
from sadakit.testbeds.configs import Testbed
from sadakit.testbeds.pipeline import SD_SCHEDULE, GMMEpsModel, GMMPipeline, GMMPipelineOutput, sd_alphas_cumprod

BASELINES = ("ddim", "euler", "euler-karras", "heun", "dpm++2m", "dpm++3m", "unipc", "deis", "ipndm", "flow-euler")


def sd_sigma_range() -> tuple[float, float]:
    """The VE sigma range of SD's training schedule, where the eps model can be evaluated."""
    ab = sd_alphas_cumprod()
    s = ((1 - ab) / ab).sqrt()
    return float(s[0]), float(s[-1])


@dataclasses.dataclass
class AdaSDEMethod:
    """A benchmark row: distil (or load cached) coefficients for the config and NFE, then sample."""

    name: str
    base: DistillConfig
    cache: Path
    fresh: bool = False
    distill_seconds: dict = dataclasses.field(default_factory=dict)
    #: the starting grid's (top, bottom) when not the model's range (learned ends start from a tuned-style grid)
    init_range: tuple[float, float] | None = None

    def coefficients(self, tb: Testbed, nfe: int) -> Path:
        path = self.cache / f"{tb.name}-{self.name}-nfe{nfe}.safetensors"
        if path.exists() and not self.fresh:
            meta = load_coefficients(path).meta
            self.distill_seconds[(tb.name, nfe)] = (meta.training.get("seconds", math.nan), True)
            return path
        smin, smax = sd_sigma_range()
        if self.init_range is not None:
            smax, smin = self.init_range
        cfg = attrs.evolve(self.base, nfe=nfe, sigma_min=smin, sigma_max=smax)

        def denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            return tb.denoiser.denoise(x, sigma)

        def sample_noise(batch: int, generator: torch.Generator) -> torch.Tensor:
            return torch.randn((batch, *tb.data_shape), generator=generator)

        t0 = time.perf_counter()
        res = distill(
            denoiser, sample_noise, cfg, model=f"testbed:{tb.name}", prediction_type="epsilon",
            output=path, log_path=path.with_suffix(".jsonl"), resume=not self.fresh, progress=False,
            model_sigma_range=sd_sigma_range() if cfg.learn_ends else None,
        )
        seconds = time.perf_counter() - t0
        self.distill_seconds[(tb.name, nfe)] = (seconds, False)
        print(
            f"[distill] {tb.name} {self.name} NFE={nfe}: loss {res.initial_loss:.4g} -> {res.losses[-1]:.4g} "
            f"in {seconds:.1f} s ({cfg.iterations} it x {cfg.batch_size}, teacher x{cfg.teacher_factor})",
            file=sys.stderr, flush=True,
        )
        return path

    def run(self, ctx: bench.BenchContext, nfe: int) -> GMMPipelineOutput | None:
        try:
            path = self.coefficients(ctx.testbed, nfe)
        except ValueError:  # NFE not reachable (even NFE with the analytic first step)
            return None
        sched = AdaSDEScheduler.from_file(path, SD_SCHEDULE, model=f"testbed:{ctx.testbed.name}")
        pipe = GMMPipeline(GMMEpsModel(ctx.testbed), sched)
        out = pipe(num_inference_steps=nfe, latents=ctx.noise)
        # The trajectory starts at x = sigma_max z (the pipeline records the first *model* call,
        # which with the analytic first step is already the mid-point): give the reference the
        # true start, x_flow = sigma_max / (1 + sigma_max) z at tau = sigma_max / (1 + sigma_max).
        smax = float(sched.coefficients.sigmas[0])
        tau = smax / (1.0 + smax)
        return dataclasses.replace(out, start_tau=tau, start_scale=tau)


@dataclasses.dataclass
class GridSolverMethod:
    """A diffusers solver on one grid option: its default (linspace), Karras, trailing, or a tuned log-linear grid.

    The tuned grid's top and bottom are picked from ``TUNE_HI`` x ``TUNE_LO`` by sliced W2 on
    *calibration* noise (another seed than the evaluated samples), per NFE.
    """

    name: str
    solver: str  # a key of bench_adasde_grids.SOLVERS
    grid: str  # "default", "karras", "trailing" or "tuned"

    def _pipe(self, tb: Testbed, nfe: int) -> GMMPipeline:
        from bench_adasde_grids import loglinear, make_scheduler

        base = dict(SD_SCHEDULE, final_sigmas_type="zero") if self.solver != "deis" else dict(SD_SCHEDULE)
        if self.grid != "tuned":
            return GMMPipeline(GMMEpsModel(tb), make_scheduler(self.solver, self.grid, base))
        key = (tb.name, nfe)
        if key not in self._chosen:
            calib = torch.randn((512, *tb.data_shape), generator=torch.Generator().manual_seed(999))
            scores = {}
            for hi in TUNE_HI:
                for lo in TUNE_LO:
                    pipe = GMMPipeline(GMMEpsModel(tb), make_scheduler(self.solver, "default", base, loglinear(nfe, hi, lo)))
                    out = pipe(num_inference_steps=nfe, latents=calib)
                    scores[(hi, lo)] = float(bench.M.distribution_distance(tb.mixture, out.samples, 4).mean)
            self._chosen[key] = min(scores, key=scores.get)
            print(f"[tune] {tb.name} {self.solver} NFE={nfe}: log-linear {self._chosen[key]}", file=sys.stderr)
        hi, lo = self._chosen[key]
        return GMMPipeline(GMMEpsModel(tb), make_scheduler(self.solver, "default", base, loglinear(nfe, hi, lo)))

    def __post_init__(self) -> None:
        self._chosen: dict = {}

    def run(self, ctx: bench.BenchContext, nfe: int) -> GMMPipelineOutput | None:
        return self._pipe(ctx.testbed, nfe)(num_inference_steps=nfe, latents=ctx.noise)


def sw_per_draw(ctx: bench.BenchContext, samples: torch.Tensor, repeats: int, seed: int = 0) -> list[float]:
    """Sliced W2 to ``repeats`` fresh exact sample sets, one value per draw (``metrics.distribution_distance``'s
    draws: the same seed gives every method the same true samples and projections, so draws pair up)."""
    from sadakit.testbeds import metrics as M

    g = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(repeats):
        truth = ctx.testbed.mixture.sample(samples.shape[0], generator=g)
        values.append(M.sliced_wasserstein(samples, truth, 256, generator=g))
    return values


def paired_sw(config: str, ours: str, best: str, nfe: int, n_samples: int, repeats: int) -> tuple[float, float]:
    """Mean and 95 % half-width of the per-draw sliced-W2 difference ``ours - best`` (same noise, same draws)."""
    ctx = bench.make_context(config, n_samples, sw_repeats=repeats)
    a = sw_per_draw(ctx, bench.METHODS[ours].run(ctx, nfe).samples, repeats)
    b = sw_per_draw(ctx, bench.METHODS[best].run(ctx, nfe).samples, repeats)
    d = torch.tensor(a, dtype=torch.float64) - torch.tensor(b, dtype=torch.float64)
    return float(d.mean()), 1.96 * float(d.std(unbiased=True)) / math.sqrt(len(d))


TUNE_HI = (14.6, 7.0, 3.5)
TUNE_LO = (0.03, 0.1, 0.3)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="+", default=["gmm2d-8", "gmm64-16-err"])
    p.add_argument("--nfe", nargs="+", type=int, default=[3, 5, 7, 9])
    p.add_argument("--baselines", nargs="+", default=list(BASELINES))
    p.add_argument("--samples", type=int, default=512)
    p.add_argument("--sw-repeats", type=int, default=8)
    p.add_argument("--iterations", type=int, default=150)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--teacher-factor", type=int, default=8)
    p.add_argument("--gamma-max", type=float, default=0.3)
    p.add_argument("--schedule", default="karras")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache", type=Path, default=Path("results/adasde"))
    p.add_argument("--fresh", action="store_true", help="distil again even when a cached file exists")
    p.add_argument("--plugins", action="store_true", help="also rows for learned churn + Euler/Heun/mid-point")
    p.add_argument("--out", type=Path, default=None, help="JSON output path")
    p.add_argument("--learn-grid", action="store_true",
                   help="also rows with the sigma grid learned (AdaSDE and Euler, last-step loss)")
    p.add_argument("--learn-ends", action="store_true",
                   help="also a row with the grid and its ends learned (Euler form, last step to 0, teacher from the "
                        "model's top), started from the log-linear grid --ends-init")
    p.add_argument("--ends-init", nargs=2, type=float, default=[14.6, 0.1], metavar=("TOP", "BOTTOM"))
    p.add_argument("--teacher-pool", type=int, default=0, help="--learn-ends: batches of the teacher computed once")
    p.add_argument("--multistep", action="store_true",
                   help="also a row with the multistep form (learned weights of the current and two previous denoised "
                        "estimates) and its whole grid learned, from the log-linear grid --ends-init")
    p.add_argument("--multistep-start", default="dpm++2m", choices=["dpm++2m", "euler"],
                   help="--multistep: the solver the untrained weights reproduce")
    p.add_argument("--multistep-churn", type=float, default=0.0, metavar="GAMMA_MAX",
                   help="--multistep: also the row with learned churn (at most GAMMA_MAX) in front of the multistep step")
    p.add_argument("--grid-baselines", action="store_true",
                   help="also euler/dpm++2m/dpm++3m/unipc/deis on their default (linspace), Karras, trailing and tuned grids")
    p.add_argument("--no-plain", action="store_true", help="skip the fixed-grid adasde and adasde-g0 rows")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # mixture posteriors underflow at small sigma: denormals cost 30x on CPU
    args.cache.mkdir(parents=True, exist_ok=True)

    base = DistillConfig(
        iterations=args.iterations, batch_size=args.batch, teacher_factor=args.teacher_factor,
        gamma_max=args.gamma_max, schedule=args.schedule, checkpoint_every=50,
    )
    ours = [] if args.no_plain else [
        AdaSDEMethod("adasde", base, args.cache, args.fresh),
        AdaSDEMethod("adasde-g0", attrs.evolve(base, gamma_max=0.0), args.cache, args.fresh),
    ]
    if args.learn_grid:  # the grid learned with the coefficients, from the last-step loss (the testbed's best)
        lg = attrs.evolve(base, learn_grid=True, step_weight=0.0, grid_lr=0.1)
        ours += [AdaSDEMethod("adasde-lgrid", lg, args.cache, args.fresh),
                 AdaSDEMethod("euler-lgrid", attrs.evolve(lg, solver="euler", gamma_max=0.0), args.cache, args.fresh)]
    if args.learn_ends:  # the whole grid, ends included, against the reference from the model's top (no AFS: top = call)
        ends = attrs.evolve(base, solver="euler", gamma_max=0.0, analytic_first_step=False, learn_grid=True,
                            learn_ends=True, step_weight=0.0, grid_lr=0.05, schedule="loglinear",
                            teacher_pool=args.teacher_pool)
        ours.append(AdaSDEMethod("euler-ends", ends, args.cache, args.fresh, init_range=tuple(args.ends_init)))
    if args.multistep:  # learned multistep weights with the whole grid, final-sample loss against the reference
        ms = attrs.evolve(base, solver="multistep", gamma_max=0.0, analytic_first_step=False, learn_grid=True,
                          learn_ends=True, step_weight=0.0, grid_lr=0.05, schedule="loglinear",
                          teacher_pool=args.teacher_pool, multistep_start=args.multistep_start)
        ours.append(AdaSDEMethod("multistep-ends", ms, args.cache, args.fresh, init_range=tuple(args.ends_init)))
        if args.multistep_churn > 0:  # the same, with AdaSDE's learned churn in front of each step
            ours.append(AdaSDEMethod("multistep-churn", attrs.evolve(ms, gamma_max=args.multistep_churn), args.cache,
                                     args.fresh, init_range=tuple(args.ends_init)))
    grid_rows = []
    if args.grid_baselines:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        grid_rows = [GridSolverMethod(f"{solver}@{grid}", solver, grid)
                     for solver in ("euler", "dpm++2m", "dpm++3m", "unipc", "deis")
                     for grid in ("default", "karras", "trailing", "tuned")]
        for m in grid_rows:
            if m.name not in bench.METHODS:
                bench.register_method(m)
    if args.plugins:  # the paper's plugin form: learned churn in front of a base solver
        ours += [
            AdaSDEMethod(f"churn-{solver}", attrs.evolve(base, solver=solver), args.cache, args.fresh)
            for solver in ("euler", "heun", "midpoint")
        ]
    for m in ours:
        if m.name not in bench.METHODS:
            bench.register_method(m)

    t0 = time.perf_counter()
    rows, summaries = bench.run_benchmark(
        tuple(args.configs), tuple(args.nfe), list(args.baselines) + [m.name for m in grid_rows] + [m.name for m in ours],
        args.samples, args.sw_repeats,
        log=lambda s: print(s, file=sys.stderr, flush=True),
    )
    print(bench.markdown_tables(rows, summaries))
    print("Distillation wall time (this CPU, 1 thread; cached = time recorded when the file was made):\n")
    print("| config | method | NFE | seconds |")
    print("|---|---|---:|---:|")
    for m in ours:
        for (cfg, nfe), (sec, cached) in sorted(m.distill_seconds.items()):
            print(f"| {cfg} | {m.name} | {nfe} | {sec:.1f}{' (cached)' if cached else ''} |")

    print("\nWins at equal NFE (sw = sliced Wasserstein-2 to exact samples, lower is better):\n")
    for s in summaries:
        for nfe in args.nfe:
            sub = [r for r in rows if r.config == s.config and r.nfe == nfe]
            baseline_names = set(args.baselines) | {m.name for m in grid_rows}
            others = [r for r in sub if r.method in baseline_names]
            if not others:
                continue
            best = min(others, key=lambda r: r.values["sw"].mean)
            b, b_ci = best.values["sw"].mean, best.values["sw"].ci95
            for ada in [r for r in sub if r.method in {m.name for m in ours}]:
                a, a_ci = ada.values["sw"].mean, ada.values["sw"].ci95
                verdict = ("wins" if a + a_ci < b - b_ci else "loses" if a - a_ci > b + b_ci
                           else "tie (CIs overlap)")
                diff, half = paired_sw(s.config, ada.method, best.method, nfe, args.samples, args.sw_repeats)
                paired = "wins" if diff + half < 0 else "loses" if diff - half > 0 else "tie (inside the noise)"
                print(f"- {s.config} NFE {nfe}: {ada.method} sw {a:.4f} +- {a_ci:.4f} vs best diffusers {best.method} "
                      f"{b:.4f} +- {b_ci:.4f} -> {verdict}; paired per-draw difference {diff:+.4f} +- {half:.4f} "
                      f"-> {paired}")
    print(f"\n_{len(rows)} rows in {time.perf_counter() - t0:.0f} s, torch {torch.__version__}_")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"rows": [r.as_json() for r in rows]}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
