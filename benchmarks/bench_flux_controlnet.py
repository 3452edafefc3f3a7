"""Baseline vs SADA on medium Flux and medium SDXL-ControlNet (compute-dominated on this CPU).

Prints one Markdown table: denoiser calls computed, ControlNet calls run, block tokens
computed, wall-time ratio measured in one run (baseline and SADA alternate; medians) and PSNR
of the SADA output against the baseline. Random weights: the numbers show what the runtime
does on these trajectories, not a trained model's fidelity (see FIELD-NOTES.md).

    .venv/bin/python benchmarks/bench_flux_controlnet.py --repeats 3
"""

from __future__ import annotations

import argparse
from typing import Any, Callable

import diffusers
import torch

import sadakit
from sadakit.timing import time_pair
from sadakit.metrics.image import psnr
from sadakit.testing.pipelines import control_probe, tiny_flux_pipeline, tiny_sdxl_controlnet_pipeline


def flux_case(args) -> tuple[Any, Callable[[], torch.Tensor]]:
    pipe = tiny_flux_pipeline("medium")

    def run() -> torch.Tensor:
        return pipe(
            prompt=args.prompt, num_inference_steps=args.steps, height=args.size, width=args.size,
            max_sequence_length=64, output_type="pt", generator=torch.Generator().manual_seed(args.seed),
        ).images

    return pipe, run


def sdxl_controlnet_case(args) -> tuple[Any, Callable[[], torch.Tensor]]:
    pipe = tiny_sdxl_controlnet_pipeline("medium")
    image = control_probe(3, args.size, args.size)

    def run() -> torch.Tensor:
        return pipe(
            prompt=args.prompt, image=image, num_inference_steps=args.steps, height=args.size, width=args.size,
            guidance_scale=5.0, output_type="pt", generator=torch.Generator().manual_seed(args.seed),
        ).images

    return pipe, run


def stochastic_flux(pipe) -> None:
    pipe.scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_config(
        pipe.scheduler.config, stochastic_sampling=True
    )


def bench(pipe, run, config: sadakit.SADAConfig, repeats: int) -> dict:
    timing = time_pair(pipe, run, repeats, config)
    base, out, rep = timing.baseline, timing.accelerated, timing.report
    b, s = timing.baseline_s, timing.accelerated_s
    return dict(
        calls=f"{rep.network_calls}/{rep.denoiser_calls}",
        decisions=rep.decisions,
        control=str(rep.control_calls_run) if rep.control_calls_run else "-",
        tokens=f"{100.0 * rep.tokens_computed / rep.tokens_total:.0f}%" if rep.tokens_total else "-",
        base=b,
        sada=s,
        speedup=b / s,
        psnr=psnr(out, base),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompt", default="a red square on the left of a blue circle")
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows = []
    pipe, run = flux_case(args)
    rows.append(("Flux (medium)", "FlowMatch Euler", "default", bench(pipe, run, sadakit.SADAConfig(), args.repeats)))
    stochastic_flux(pipe)
    rows.append(
        ("Flux (medium)", "FlowMatch Euler, stochastic", "default", bench(pipe, run, sadakit.SADAConfig(), args.repeats))
    )
    del pipe
    pipe, run = sdxl_controlnet_case(args)
    rows.append(("SDXL-ControlNet (medium)", "Euler", "default", bench(pipe, run, sadakit.SADAConfig(), args.repeats)))
    print(f"{args.steps} steps, {args.size}x{args.size}, batch 1, {args.repeats} alternating repetitions (medians)\n")
    print("| pipeline | scheduler | config | calls computed | ControlNet runs | tokens computed | baseline s | SADA s | speed-up | PSNR dB | decisions |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, sched, cfg, r in rows:
        print(
            f"| {name} | {sched} | {cfg} | {r['calls']} | {r['control']} | {r['tokens']} | {r['base']:.2f} | "
            f"{r['sada']:.2f} | {r['speedup']:.2f}x | {r['psnr']:.1f} | `{r['decisions']}` |"
        )


if __name__ == "__main__":
    main()
