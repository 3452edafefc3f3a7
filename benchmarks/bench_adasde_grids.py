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

``--model shapes-dit`` (the bundled Flux model, flow matching, true CFG) runs diffusers'
flow-matching solvers instead: FlowMatchEuler (its default grid, its Karras / exponential /
beta sigma options, its ``shift``, and a tuned grid: shift x bottom chosen on calibration
samples), FlowMatchHeun (default and shift; 2 calls per step but the last), UniPC and
DPM-Solver++ 2M / 3M with ``use_flow_sigmas`` and ``prediction_type="flow_prediction"``
(default and ``flow_shift``; UniPC also the tuned grid). The reference is the model's default
28-step Euler output (``--model moving-shapes``, the bundled Wan model with CFG: its 20-step UniPC
output; Wan passes no sigmas, so each solver's default grid is its own spacing); more samples than its 48 prompts cycle them with new seeds. Every row's
transformer calls are counted (``calls``: per image, both CFG branches), and a row whose count
is not 2 x NFE is refused.

    python benchmarks/bench_adasde_grids.py --model shapes --nfe 3 5 7 --threads 1 \
        --adasde lgrid5=sadakit/bundled/models/shapes-adasde/euler-nfe5-lgrid.safetensors
    python benchmarks/bench_adasde_grids.py --model shapes-dit --nfe 5 7 --prompts 96 --threads 1 \
        --adasde e5=euler-nfe5.safetensors
    python benchmarks/bench_adasde_grids.py --model moving-shapes --nfe 5 7 --prompts 96 --threads 1
"""

from __future__ import annotations

import argparse
import inspect
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
from bench_adasde_bundled import BATCH, BenchModel  # noqa: E402
from bench_adasde_bundled import MODELS as VP_MODELS  # noqa: E402

from sadakit.adasde import AdaSDEScheduler, load_coefficients  # noqa: E402
from sadakit.bench.harness import ForwardCounter  # noqa: E402

#: label -> (diffusers class, constructor overrides)
SOLVERS: dict[str, tuple[str, dict[str, Any]]] = {
    "euler": ("EulerDiscreteScheduler", {}),
    "dpm++2m": ("DPMSolverMultistepScheduler", {"solver_order": 2}),
    "dpm++3m": ("DPMSolverMultistepScheduler", {"solver_order": 3}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "deis": ("DEISMultistepScheduler", {}),
}
GRIDS = ("default", "karras", "trailing", "tuned")

_FLOW = {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}
#: flow-matching solvers: label -> (diffusers class, constructor overrides, grids that apply)
FLOW_SOLVERS: dict[str, tuple[str, dict[str, Any], tuple[str, ...]]] = {
    "flow-euler": ("FlowMatchEulerDiscreteScheduler", {}, ("default", "karras", "exponential", "beta", "shift", "tuned")),
    "flow-heun": ("FlowMatchHeunDiscreteScheduler", {}, ("default", "shift")),
    # UniPC's Karras option on flow sigmas gives an increasing grid in diffusers 0.42 (0.17 -> 0.5): not offered
    "unipc": ("UniPCMultistepScheduler", _FLOW, ("default", "shift", "tuned")),
    "dpm++2m": ("DPMSolverMultistepScheduler", {**_FLOW, "solver_order": 2}, ("default", "shift")),
    "dpm++3m": ("DPMSolverMultistepScheduler", {**_FLOW, "solver_order": 3}, ("default", "shift")),
}
FLOW_GRIDS = ("default", "karras", "exponential", "beta", "shift", "tuned")


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


def flow_steps(label: str, nfe: int) -> int:
    """``num_inference_steps`` that gives ``nfe`` calls of the guided denoiser (Heun: 2 per step but the first)."""
    if label != "flow-heun":
        return nfe
    if nfe % 2 == 0:
        raise ValueError(f"flow-heun makes 2 steps - 1 calls: NFE {nfe} is not reachable")
    return (nfe + 1) // 2


def shifted(t: np.ndarray, shift: float) -> np.ndarray:
    """diffusers' flow time shift ``s t / (1 + (s - 1) t)`` (the ``shift`` / ``flow_shift`` option)."""
    return shift * t / (1 + (shift - 1) * t)


def make_flow_scheduler(label: str, grid: str, base_config: Any, shift: float = 1.0, bottom: float | None = None) -> Any:
    """A diffusers flow-matching scheduler of ``label`` on ``grid`` for a pipeline that passes its own sigmas (Flux).

    ``shift`` is the ``shift`` / ``flow_shift`` option (grids "shift" and "tuned"); ``bottom``
    (grid "tuned") the last flow time before the final step to 0, the grid then being
    ``linspace(1, bottom, n)`` shifted. Flux calls ``set_timesteps(sigmas=linspace(1, 1/n, n), mu=...)``;
    solvers that take sigmas get those (or the tuned ones), the others their own default spacing.
    """
    import diffusers

    cls_name, overrides, grids = FLOW_SOLVERS[label]
    if grid not in grids:
        raise ValueError(f"{label}: grid {grid!r} does not apply; allowed: {', '.join(grids)}")
    if grid == "tuned" and bottom is None:
        raise ValueError(f"{label}: the tuned grid needs bottom=")
    kwargs = dict(overrides)
    if grid in ("karras", "exponential", "beta"):
        kwargs[f"use_{grid}_sigmas"] = True
    if grid in ("shift", "tuned"):  # a fixed shift (a resolution-dependent one would override it)
        kwargs["shift" if label.startswith("flow-") else "flow_shift"] = shift
        kwargs["use_dynamic_shifting"] = False
    sched = getattr(diffusers, cls_name).from_config(base_config, **kwargs)
    original = sched.set_timesteps
    accepted = inspect.signature(original).parameters
    extra = {"mu": None} if "mu" in accepted else {}

    def set_timesteps(num_inference_steps: int | None = None, device: Any = None, sigmas: Any = None,
                      mu: float | None = None, **_: Any) -> None:
        steps = num_inference_steps or len(sigmas)
        if grid == "tuned":
            sigmas = np.linspace(1.0, bottom, steps)
        if "mu" in extra:  # the resolution-dependent shift, for a scheduler set up for it (DPM asserts that)
            extra["mu"] = mu if sched.config.get("use_dynamic_shifting") else None
        if "sigmas" in accepted and sigmas is not None:
            original(device=device, sigmas=np.asarray(sigmas, dtype=np.float64), **extra)
        else:
            original(num_inference_steps=steps, device=device, **extra)

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


def _flow_bench_model(spec: Any, model: Any, baseline_solver: str, adherence: Any, to_images: Any,
                      third: tuple[str, str]) -> BenchModel:
    """A bundled flow model (``model``: its model module) for the bench: PSNR of ``to_images(outputs)`` to the
    default-steps output, the judge's adherence (all three) and one attribute of it (``third``: key, header)."""
    from sadakit.metrics.image import psnr

    key, head = third

    def measure(out: torch.Tensor, reference: torch.Tensor, prompts: list[str]) -> dict[str, float]:
        adh = adherence(out, prompts)
        return {"psnr": float(psnr(to_images(out), to_images(reference))), "adherence": adh.all_correct,
                key: getattr(adh, key)}

    def prompts_for(n: int) -> list[str]:  # beyond the 48 prompts: again, with other seeds (sample i: seed + i)
        every = model.eval_prompts()
        return [every[i % len(every)] for i in range(n)]

    return BenchModel(
        spec=spec, load=model.load_pipeline, default_steps=model.DEFAULT_STEPS, baseline_solver=baseline_solver,
        distill_prompts=model.eval_prompts(), distill_call_kwargs=dict(model.CALL_KWARGS), eval_prompts=prompts_for,
        generate=lambda pipe, prompts, seed, steps: model.generate(pipe, prompts, seed=seed, num_inference_steps=steps),
        measure=measure,
        columns=((("psnr", f"PSNR dB vs {model.DEFAULT_STEPS}-step", ".2f"), ("adherence", "adherence (all three)", ".1%"),
                  (key, head, ".1%"))),
    )


def shapes_dit_model() -> BenchModel:
    """The bundled Flux model: PSNR to its 28-step output, the shapes classifier's adherence."""
    from sadakit.bundled.adasde_files import SHAPES_DIT
    from sadakit.bundled.shapes_dit import judging, model

    return _flow_bench_model(SHAPES_DIT, model, "flow-euler", judging.adherence, lambda x: x, ("position", "position"))


def moving_shapes_model() -> BenchModel:
    """The bundled Wan model: PSNR of the clips (all frames) to its 20-step UniPC output, the judge's adherence."""
    from sadakit.bundled.adasde_files import MOVING_SHAPES
    from sadakit.bundled.moving_shapes import judging, model

    return _flow_bench_model(MOVING_SHAPES, model, "unipc", judging.adherence, lambda clips: clips.flatten(0, 1),
                             ("direction", "direction"))


MODELS = {**VP_MODELS, "shapes-dit": shapes_dit_model, "moving-shapes": moving_shapes_model}
FLOW_MODELS = {"shapes-dit", "moving-shapes"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="shapes", choices=sorted(MODELS))
    p.add_argument("--nfe", nargs="+", type=int, default=[3, 5, 7])
    p.add_argument("--prompts", type=int, default=48, help="evaluation samples")
    p.add_argument("--calib", type=int, default=16, help="calibration samples for the tuned grid")
    p.add_argument("--seed", type=int, default=0, help="evaluation seeds: seed + i")
    p.add_argument("--calib-seed", type=int, default=1000, help="calibration seeds: calib_seed + i")
    p.add_argument("--solvers", nargs="+", default=None, choices=sorted(set(SOLVERS) | set(FLOW_SOLVERS)),
                   help=f"default: {' '.join(SOLVERS)} (VP models), {' '.join(FLOW_SOLVERS)} (shapes-dit, moving-shapes)")
    p.add_argument("--grids", nargs="+", default=None, choices=sorted(set(GRIDS) | set(FLOW_GRIDS)),
                   help=f"default: {' '.join(GRIDS)} (VP), {' '.join(FLOW_GRIDS)} (flow; each solver runs those that apply)")
    p.add_argument("--tune-hi", nargs="+", type=float, default=[80.0, 30.0, 14.6, 7.0], help="VP tuned grid: tops")
    p.add_argument("--tune-lo", nargs="+", type=float, default=[0.03, 0.1, 0.3, 0.7], help="VP tuned grid: bottoms")
    p.add_argument("--tune-shift", nargs="+", type=float, default=[0.5, 1.0, 2.0, 3.0, 5.0],
                   help="flow grids 'shift' and 'tuned': the shift values tried")
    p.add_argument("--tune-bottom", nargs="+", type=float, default=[0.05, 0.1, 0.2, 0.3],
                   help="flow grid 'tuned': the last flow time before the step to 0")
    p.add_argument("--adasde", nargs="*", default=[], metavar="LABEL=PATH", help="AdaSDE coefficient files to compare")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, help="write every row (with per-sample PSNR) here")
    p.add_argument("--only", nargs="*", default=None, metavar="SOLVER:NFE:HI:LO",
                   help="instead of the sweep, just these diffusers rows on a log-linear grid (e.g. a sweep's winners; "
                        "flow: SOLVER:NFE:SHIFT:BOTTOM, the tuned grid)")
    p.add_argument("--load-baselines", default=None,
                   help="rows of an earlier --json run with the same --prompts and --seed: skip the diffusers runs")
    args = p.parse_args(argv)
    flow = args.model in FLOW_MODELS
    family_solvers, family_grids = (FLOW_SOLVERS, FLOW_GRIDS) if flow else (SOLVERS, GRIDS)
    args.solvers = list(family_solvers) if args.solvers is None else args.solvers
    args.grids = list(family_grids) if args.grids is None else args.grids
    for option, given, allowed in (("--solvers", args.solvers, family_solvers), ("--grids", args.grids, family_grids)):
        wrong = [v for v in given if v not in allowed]
        if wrong:
            p.error(f"{option} {' '.join(wrong)}: not for --model {args.model}; allowed: {', '.join(allowed)}")
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    model = MODELS[args.model]()
    pipe = model.load()
    pipe.set_progress_bar_config(disable=True)
    base = pipe.scheduler
    prompts = model.eval_prompts(args.prompts)
    calib_prompts = model.eval_prompts(args.calib)
    counter = ForwardCounter(pipe.transformer if flow else pipe.unet)  # the calls column is measured, not assumed
    last_calls: list[float] = []

    def run(sched: Any, steps: int, which: str) -> Any:
        pipe.scheduler = sched
        batch = calib_prompts if which == "calib" else prompts
        counter.reset()
        out = model.generate(pipe, batch, args.calib_seed if which == "calib" else args.seed, steps)
        last_calls[:] = [counter.count / math.ceil(len(batch) / BATCH)]
        return out

    reference = run(base, model.default_steps, "eval")
    rows: list[dict[str, Any]] = []
    if args.load_baselines:
        rows = [r for r in json.loads(Path(args.load_baselines).read_text()) if r["nfe"] in args.nfe]
        args.solvers = []
    tunes = {"tuned", "shift"} if flow else {"tuned"}
    calib_reference = run(base, model.default_steps, "calib") if (tunes & set(args.grids) and args.solvers) else None

    def record(method: str, grid: str, nfe: int, out: Any, extra: dict[str, Any] | None = None) -> None:
        calls = last_calls[0]
        if flow and calls != 2 * nfe:  # true CFG: two transformer calls per evaluation, for every method alike
            raise RuntimeError(f"{method} on {grid}: {calls:g} transformer calls per image, not 2 x NFE {nfe}")
        values = per_sample_psnr(model, out, reference, prompts)
        row = {"method": method, "grid": grid, "nfe": nfe, **model.measure(out, reference, prompts),
               "psnr_mean": float(np.mean(values)), "psnr_ci": ci95(values), "psnr_values": values, "calls": calls,
               **(extra or {})}
        rows.append(row)
        print(f"  {method:>10} {grid:>24} NFE={nfe}: PSNR {row['psnr']:.2f} (per-sample mean {row['psnr_mean']:.2f} "
              f"+- {row['psnr_ci']:.2f})", file=sys.stderr, flush=True)

    def vp_rows(nfe: int, label: str, grid: str) -> None:
        if grid != "tuned":
            record(label, grid, nfe, run(make_scheduler(label, grid, base.config), nfe, "eval"))
            return
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

    def flow_rows(nfe: int, label: str, grid: str) -> None:
        if grid not in FLOW_SOLVERS[label][2]:
            return  # an option this solver does not have (the table lists what applies)
        try:
            steps = flow_steps(label, nfe)
        except ValueError as err:
            print(f"  skip {label} NFE={nfe}: {err}", file=sys.stderr)
            return
        if grid not in tunes:
            record(label, grid, nfe, run(make_flow_scheduler(label, grid, base.config), steps, "eval"))
            return
        candidates = ([(sh, None) for sh in args.tune_shift] if grid == "shift"
                      else list(itertools.product(args.tune_shift, args.tune_bottom)))
        scores = {}
        for shift, bottom in candidates:
            sched = make_flow_scheduler(label, grid, base.config, shift, bottom)
            scores[(shift, bottom)] = model.measure(run(sched, steps, "calib"), calib_reference, calib_prompts)["psnr"]
        shift, bottom = max(scores, key=scores.get)
        name = f"shift {shift:g}" if bottom is None else f"tuned shift {shift:g}, bottom {bottom:g}"
        record(label, name, nfe, run(make_flow_scheduler(label, grid, base.config, shift, bottom), steps, "eval"),
               {"calib_psnr": scores[(shift, bottom)]})

    for nfe in args.nfe if args.only is None else []:
        for label in args.solvers:
            for grid in args.grids:
                (flow_rows if flow else vp_rows)(nfe, label, grid)
    for entry in args.only or []:
        label, nfe_text, hi_text, lo_text = entry.split(":")
        nfe, hi, lo = int(nfe_text), float(hi_text), float(lo_text)
        if flow:
            record(label, f"tuned shift {hi:g}, bottom {lo:g}", nfe,
                   run(make_flow_scheduler(label, "tuned", base.config, hi, lo), flow_steps(label, nfe), "eval"))
            continue
        record(label, f"tuned log-linear {hi:g}-{lo:g}", nfe,
               run(make_scheduler(label, "default", base.config, loglinear(nfe, hi, lo)), nfe, "eval"))
    for spec in args.adasde:
        label, _, path = spec.partition("=")
        cf = load_coefficients(path)
        sched = AdaSDEScheduler.from_file(path, base, model=model.spec.model_id, guidance_scale=model.spec.guidance_scale)
        record(label, f"{cf.meta.schedule} {[round(float(s), 3) for s in cf.sigmas]}", cf.meta.nfe,
               run(sched, cf.meta.nfe, "eval"), {"distill_seconds": cf.meta.training.get("seconds")})
    counter.close()
    pipe.scheduler = base

    heads = [head for _, head, _ in model.columns]
    print("| method | NFE | calls / image | best grid | " + " | ".join(heads) + " | per-sample PSNR mean +- 95% CI |")
    print("|---|---|---|---|" + "---|" * len(heads) + "---|")
    for nfe in sorted({r["nfe"] for r in rows}):
        sub = [r for r in rows if r["nfe"] == nfe]
        best: dict[str, dict[str, Any]] = {}
        for r in sub:
            if r["method"] not in best or r["psnr"] > best[r["method"]]["psnr"]:
                best[r["method"]] = r
        for r in sorted(best.values(), key=lambda r: -r["psnr"]):
            cells = [f"{r[key]:{fmt}}" for key, _, fmt in model.columns]
            calls = f"{r['calls']:g}" if r.get("calls") is not None else "n/a"  # older --load-baselines rows
            print(f"| {r['method']} | {nfe} | {calls} | {r['grid']} | " + " | ".join(cells)
                  + f" | {r['psnr_mean']:.2f} +- {r['psnr_ci']:.2f} |")
    adasde_labels = {spec.partition("=")[0] for spec in args.adasde}
    for r in rows:
        r.setdefault("kind", "adasde" if r["method"] in adasde_labels else "diffusers")
    adasde_labels |= {r["method"] for r in rows if r["kind"] == "adasde"}
    print("\nPaired per-sample PSNR difference to the best diffusers solver on its best grid (same samples):\n")
    print("| AdaSDE file | NFE | best diffusers (NFE, grid) | its PSNR | AdaSDE PSNR | mean difference dB +- 95% CI | verdict |")
    print("|---|---|---|---|---|---|---|")
    baselines = [o for o in rows if o["method"] not in adasde_labels]
    for r in [r for r in rows if r["method"] in adasde_labels]:
        # at the file's NFE, else the nearest NFE above (AdaSDE's own step on a flow model: 2 calls per step,
        # so its NFE 4 / 6 files meet the solvers at 5 / 7 with one evaluation fewer)
        above = sorted({o["nfe"] for o in baselines if o["nfe"] >= r["nfe"]})
        if not above:
            continue
        top = max([o for o in baselines if o["nfe"] == above[0]], key=lambda o: o["psnr"])
        diff = np.asarray(r["psnr_values"]) - np.asarray(top["psnr_values"])
        lo_hi = ci95(list(diff))
        verdict = "wins" if diff.mean() - lo_hi > 0 else "loses" if diff.mean() + lo_hi < 0 else "tie (inside the noise)"
        print(f"| {r['method']} | {r['nfe']} | {top['method']} ({top['nfe']}, {top['grid']}) | {top['psnr']:.2f} | {r['psnr']:.2f} | "
              f"{diff.mean():+.2f} +- {lo_hi:.2f} | {verdict} |")
    print(f"\n_{len(rows)} rows in {time.perf_counter() - t_start:.0f} s_", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
