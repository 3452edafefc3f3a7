"""AdaSDE files against diffusers' solvers, each solver on its best grid, on a bundled model.

Every diffusers solver (Euler, DPM-Solver++ 2M and 3M, UniPC, DEIS) runs at every NFE on four
grids: its default, Karras sigmas, "trailing" spacing, and a tuned log-linear grid in the
spirit of Align Your Steps (the top and bottom sigma chosen from ``--tune-hi`` x
``--tune-lo`` by PSNR to the 50-step output on *calibration* samples: other seeds than the
evaluation ones). The table keeps, per solver and NFE, the grid that scored best on the
evaluation samples themselves (favouring the baselines), next to every AdaSDE file given with
``--adasde``. Metrics are those of ``bench_adasde_bundled.py`` (shapes: PSNR to 50 Euler
steps, classifier adherence; notes: log-mel PSNR to 50 DDIM steps, pitch), with a 95 %
confidence interval of the mean per-sample PSNR, so a "win" inside the noise shows as one.

    python benchmarks/bench_adasde_grids.py --model shapes --nfe 3 5 7 --threads 1 \
        --adasde lgrid5=sadakit/bundled/models/shapes-adasde/euler-nfe5-lgrid.safetensors
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_adasde_bundled import MODELS, BenchModel  # noqa: E402

from sadakit.adasde import AdaSDEScheduler, load_coefficients  # noqa: E402

#: label -> (diffusers class, constructor overrides)
SOLVERS: dict[str, tuple[str, dict[str, Any]]] = {
    "euler": ("EulerDiscreteScheduler", {}),
    "dpm++2m": ("DPMSolverMultistepScheduler", {"solver_order": 2}),
    "dpm++3m": ("DPMSolverMultistepScheduler", {"solver_order": 3}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "deis": ("DEISMultistepScheduler", {}),
}
GRIDS = ("default", "karras", "trailing", "tuned")


def loglinear(steps: int, hi: float, lo: float) -> np.ndarray:
    """``steps`` sigmas from ``hi`` down to ``lo``, uniform in log sigma (the model calls' noise levels)."""
    return np.exp(np.linspace(math.log(hi), math.log(lo), steps))


def make_scheduler(label: str, grid: str, base_config: Any, custom: np.ndarray | None = None) -> Any:
    """A diffusers scheduler of ``label`` on ``grid``; ``custom`` sigmas replace its grid (keeping its end)."""
    import diffusers

    cls_name, overrides = SOLVERS[label]
    kwargs = dict(overrides)
    if grid == "karras":
        kwargs["use_karras_sigmas"] = True
    elif grid == "trailing":
        kwargs["timestep_spacing"] = "trailing"
    sched = getattr(diffusers, cls_name).from_config(base_config, **kwargs)
    if custom is None:
        return sched
    original = sched.set_timesteps

    def set_timesteps(num_inference_steps: int | None = None, device: Any = None, **_: Any) -> None:
        # the scheduler's own bookkeeping first, then its grid replaced the way its Karras option
        # does it: sigmas for the math, the (rounded) training index of each sigma for the model
        original(num_inference_steps=len(custom), device=device)
        ab = sched.alphas_cumprod.numpy().astype(np.float64)
        log_sigmas = np.log(((1 - ab) / ab) ** 0.5)
        t = np.array([sched._sigma_to_t(s, log_sigmas) for s in custom])
        end = float(sched.sigmas[-1])  # its own final noise level (0, or sigma at t = 0)
        sched.sigmas = torch.tensor(np.concatenate([custom, [end]]), dtype=torch.float32)
        dtype = sched.timesteps.dtype
        if not dtype.is_floating_point and len(set(t.round().tolist())) < len(t):
            # an integer-timestep multistep scheduler finds its step by timestep: duplicates break it
            raise ValueError(f"{label}: the grid {custom} rounds to repeated timesteps")
        sched.timesteps = torch.from_numpy(t if dtype.is_floating_point else t.round()).to(device=device, dtype=dtype)
        if hasattr(sched, "_step_index"):
            sched._step_index = None

    sched.set_timesteps = set_timesteps
    return sched


def per_sample_psnr(model: BenchModel, out: Any, reference: Any, prompts: list[str]) -> list[float]:
    """PSNR of every sample on its own, for a confidence interval of the mean."""
    values = []
    for i in range(len(prompts)):
        pick = (lambda o: tuple(part[i : i + 1] for part in o)) if isinstance(out, tuple) else (lambda o: o[i : i + 1])
        values.append(model.measure(pick(out), pick(reference), prompts[i : i + 1])["psnr"])
    return values


def ci95(values: list[float]) -> float:
    v = np.asarray(values, dtype=np.float64)
    return float(1.96 * v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="shapes", choices=sorted(MODELS))
    p.add_argument("--nfe", nargs="+", type=int, default=[3, 5, 7])
    p.add_argument("--prompts", type=int, default=48, help="evaluation samples")
    p.add_argument("--calib", type=int, default=16, help="calibration samples for the tuned grid")
    p.add_argument("--seed", type=int, default=0, help="evaluation seeds: seed + i")
    p.add_argument("--calib-seed", type=int, default=1000, help="calibration seeds: calib_seed + i")
    p.add_argument("--solvers", nargs="+", default=list(SOLVERS), choices=list(SOLVERS))
    p.add_argument("--grids", nargs="+", default=list(GRIDS), choices=list(GRIDS))
    p.add_argument("--tune-hi", nargs="+", type=float, default=[80.0, 30.0, 14.6, 7.0])
    p.add_argument("--tune-lo", nargs="+", type=float, default=[0.03, 0.1, 0.3, 0.7])
    p.add_argument("--adasde", nargs="*", default=[], metavar="LABEL=PATH", help="AdaSDE coefficient files to compare")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, help="write every row (with per-sample PSNR) here")
    p.add_argument("--only", nargs="*", default=None, metavar="SOLVER:NFE:HI:LO",
                   help="instead of the sweep, just these diffusers rows on a log-linear grid (e.g. a sweep's winners)")
    p.add_argument("--load-baselines", default=None,
                   help="rows of an earlier --json run with the same --prompts and --seed: skip the diffusers runs")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    model = MODELS[args.model]()
    pipe = model.load()
    pipe.set_progress_bar_config(disable=True)
    base = pipe.scheduler
    prompts = model.eval_prompts(args.prompts)
    calib_prompts = model.eval_prompts(args.calib)

    def run(sched: Any, steps: int, which: str) -> Any:
        pipe.scheduler = sched
        return model.generate(pipe, calib_prompts if which == "calib" else prompts,
                              args.calib_seed if which == "calib" else args.seed, steps)

    reference = run(base, model.default_steps, "eval")
    rows: list[dict[str, Any]] = []
    if args.load_baselines:
        rows = [r for r in json.loads(Path(args.load_baselines).read_text()) if r["nfe"] in args.nfe]
        args.solvers = []
    calib_reference = run(base, model.default_steps, "calib") if ("tuned" in args.grids and args.solvers) else None

    def record(method: str, grid: str, nfe: int, out: Any, extra: dict[str, Any] | None = None) -> None:
        values = per_sample_psnr(model, out, reference, prompts)
        row = {"method": method, "grid": grid, "nfe": nfe, **model.measure(out, reference, prompts),
               "psnr_mean": float(np.mean(values)), "psnr_ci": ci95(values), "psnr_values": values, **(extra or {})}
        rows.append(row)
        print(f"  {method:>10} {grid:>24} NFE={nfe}: PSNR {row['psnr']:.2f} (per-sample mean {row['psnr_mean']:.2f} "
              f"+- {row['psnr_ci']:.2f})", file=sys.stderr, flush=True)

    for nfe in args.nfe if args.only is None else []:
        for label in args.solvers:
            for grid in args.grids:
                if grid != "tuned":
                    record(label, grid, nfe, run(make_scheduler(label, grid, base.config), nfe, "eval"))
                    continue
                scores = {}
                for hi, lo in itertools.product(args.tune_hi, args.tune_lo):
                    sched = make_scheduler(label, "default", base.config, loglinear(nfe, hi, lo))
                    try:
                        scores[(hi, lo)] = model.measure(run(sched, nfe, "calib"), calib_reference, calib_prompts)["psnr"]
                    except ValueError as err:  # a grid this scheduler cannot represent
                        print(f"  skip {label} log-linear {hi:g}-{lo:g} NFE={nfe}: {err}", file=sys.stderr)
                hi, lo = max(scores, key=scores.get)
                sched = make_scheduler(label, "default", base.config, loglinear(nfe, hi, lo))
                record(label, f"tuned log-linear {hi:g}-{lo:g}", nfe, run(sched, nfe, "eval"),
                       {"calib_psnr": scores[(hi, lo)]})
    for entry in args.only or []:
        label, nfe_text, hi_text, lo_text = entry.split(":")
        nfe, hi, lo = int(nfe_text), float(hi_text), float(lo_text)
        record(label, f"tuned log-linear {hi:g}-{lo:g}", nfe,
               run(make_scheduler(label, "default", base.config, loglinear(nfe, hi, lo)), nfe, "eval"))
    for spec in args.adasde:
        label, _, path = spec.partition("=")
        cf = load_coefficients(path)
        sched = AdaSDEScheduler.from_file(path, base, model=model.spec.model_id, guidance_scale=model.spec.guidance_scale)
        record(label, f"{cf.meta.schedule} {[round(float(s), 3) for s in cf.sigmas]}", cf.meta.nfe,
               run(sched, cf.meta.nfe, "eval"), {"distill_seconds": cf.meta.training.get("seconds")})
    pipe.scheduler = base

    heads = [head for _, head, _ in model.columns]
    print("| method | NFE | best grid | " + " | ".join(heads) + " | per-sample PSNR mean +- 95% CI |")
    print("|---|---|---|" + "---|" * len(heads) + "---|")
    for nfe in sorted({r["nfe"] for r in rows}):
        sub = [r for r in rows if r["nfe"] == nfe]
        best: dict[str, dict[str, Any]] = {}
        for r in sub:
            if r["method"] not in best or r["psnr"] > best[r["method"]]["psnr"]:
                best[r["method"]] = r
        for r in sorted(best.values(), key=lambda r: -r["psnr"]):
            cells = [f"{r[key]:{fmt}}" for key, _, fmt in model.columns]
            print(f"| {r['method']} | {nfe} | {r['grid']} | " + " | ".join(cells)
                  + f" | {r['psnr_mean']:.2f} +- {r['psnr_ci']:.2f} |")
    adasde_labels = {spec.partition("=")[0] for spec in args.adasde}
    for r in rows:
        r.setdefault("kind", "adasde" if r["method"] in adasde_labels else "diffusers")
    adasde_labels |= {r["method"] for r in rows if r["kind"] == "adasde"}
    print("\nPaired per-sample PSNR difference to the best diffusers solver on its best grid (same samples):\n")
    print("| AdaSDE file | NFE | best diffusers (grid) | its PSNR | AdaSDE PSNR | mean difference dB +- 95% CI | verdict |")
    print("|---|---|---|---|---|---|---|")
    for r in [r for r in rows if r["method"] in adasde_labels]:
        others = [o for o in rows if o["nfe"] == r["nfe"] and o["method"] not in adasde_labels]
        if not others:
            continue
        top = max(others, key=lambda o: o["psnr"])
        diff = np.asarray(r["psnr_values"]) - np.asarray(top["psnr_values"])
        lo_hi = ci95(list(diff))
        verdict = "wins" if diff.mean() - lo_hi > 0 else "loses" if diff.mean() + lo_hi < 0 else "tie (inside the noise)"
        print(f"| {r['method']} | {r['nfe']} | {top['method']} ({top['grid']}) | {top['psnr']:.2f} | {r['psnr']:.2f} | "
              f"{diff.mean():+.2f} +- {lo_hi:.2f} | {verdict} |")
    print(f"\n_{len(rows)} rows in {time.perf_counter() - t_start:.0f} s_", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
