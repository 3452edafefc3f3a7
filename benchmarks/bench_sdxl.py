"""Baseline vs SADA on the medium tiny-SDXL pipeline (UNet-dominated on this CPU).

Prints one Markdown table: steps, denoiser calls computed, wall-time ratio measured in one run
(baseline and SADA alternate; medians), sadakit's own overhead per call, PSNR/SSIM of the SADA
output against the baseline. Random weights: the speed-up shows what the criterion does on
trajectories that are not a trained model's; see the testbed and bundled-model benchmarks for
fidelity that means something.

    .venv/bin/python benchmarks/bench_sdxl.py --repeats 3
"""

from __future__ import annotations

import argparse
import json

import diffusers
import torch

import sadakit
from sadakit.timing import time_pair
from sadakit.metrics.image import psnr, ssim
from sadakit.testing.pipelines import tiny_sdxl_pipeline

SCHEDULERS = {
    "euler": lambda c: diffusers.EulerDiscreteScheduler.from_config(c),
    "dpm++2m": lambda c: diffusers.DPMSolverMultistepScheduler.from_config(c),
    "unipc": lambda c: diffusers.UniPCMultistepScheduler.from_config(c),
}


def run(pipe, args, scheduler: str) -> torch.Tensor:
    return pipe(
        prompt=args.prompts,
        num_inference_steps=args.steps,
        height=args.height,
        width=args.width,
        guidance_scale=args.guidance,
        output_type="pt",
        generator=torch.Generator().manual_seed(args.seed),
    ).images


def bench_one(pipe, args, scheduler: str, config: sadakit.SADAConfig) -> dict:
    pipe.scheduler = SCHEDULERS[scheduler](pipe.scheduler.config)
    timing = time_pair(pipe, lambda: run(pipe, args, scheduler), args.repeats, config)
    base, out, rep = timing.baseline, timing.accelerated, timing.report
    tb, ts = timing.baseline_s, timing.accelerated_s
    return {
        "scheduler": scheduler,
        "steps": args.steps,
        "calls_computed": rep.network_calls,
        "rows_computed": f"{sum(rep.per_sample_computed)}/{rep.denoiser_calls * rep.batch_size}",
        "partial_calls": rep.partial_calls,
        "tokens_computed": f"{100.0 * rep.tokens_computed / max(rep.tokens_total, 1):.0f}%",
        "baseline_s": tb,
        "sada_s": ts,
        "speedup": tb / ts,
        "overhead_ms_per_call": rep.overhead_ms_per_call,
        "flops_saved": rep.flops_saved_fraction,
        "psnr_db": psnr(out, base),
        "ssim": ssim(out, base),
        "decisions": rep.decisions,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompts", nargs="+", default=["a red square on the left"])
    parser.add_argument("--schedulers", nargs="+", default=list(SCHEDULERS), choices=list(SCHEDULERS))
    parser.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(2)
    pipe = tiny_sdxl_pipeline(size="medium")
    rows = [bench_one(pipe, args, s, sadakit.default_config(pipe)) for s in args.schedulers]
    print(f"SDXL medium (33.5M UNet), {args.height}x{args.width}, batch {len(args.prompts)}, CFG {args.guidance}, "
          f"{args.repeats} alternating repeats, medians")
    print()
    print("| scheduler | steps | calls computed | rows computed | partial calls | block tokens computed | "
          "baseline s | SADA s | speed-up | overhead ms/call | est. FLOPs saved | PSNR dB | SSIM |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        flops = "n/a" if r["flops_saved"] is None else f"{100 * r['flops_saved']:.0f}%"
        print(f"| {r['scheduler']} | {r['steps']} | {r['calls_computed']} | {r['rows_computed']} | {r['partial_calls']} | "
              f"{r['tokens_computed']} | {r['baseline_s']:.2f} | {r['sada_s']:.2f} | {r['speedup']:.2f}x | "
              f"{r['overhead_ms_per_call']:.2f} | {flops} | {r['psnr_db']:.1f} | {r['ssim']:.3f} |")
    for r in rows:
        print(f"\n{r['scheduler']} decisions: {r['decisions']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
