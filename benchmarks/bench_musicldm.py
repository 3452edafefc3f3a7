"""Baseline vs SADA on the medium tiny-MusicLDM pipeline (UNet-dominated on this CPU).

Prints one Markdown table: steps, UNet calls computed, wall-time ratio measured in one run
(baseline and SADA alternate; medians), sadakit's overhead per call, and the fidelity of the
SADA waveform against the baseline waveform: log-mel PSNR, log-spectral distance (LSD),
waveform SNR, spectrogram LPIPS (only if its weights are on the machine). Random weights: the
numbers show what the criterion does on trajectories that are not a trained model's.

    .venv/bin/python benchmarks/bench_musicldm.py --repeats 3
"""

from __future__ import annotations

import argparse
import json

import diffusers
import torch

import sadakit
from sadakit.timing import time_pair
from sadakit.audio_io import pipeline_sample_rate
from sadakit.metrics.audio import audio_fidelity
from sadakit.plugins.audio import fix_musicldm
from sadakit.testing.pipelines import tiny_musicldm_pipeline

SCHEDULERS = {
    "ddim": lambda c: diffusers.DDIMScheduler.from_config(c),  # what MusicLDM ships with
    "dpm++2m": lambda c: diffusers.DPMSolverMultistepScheduler.from_config(c),
}


def run(pipe, args) -> torch.Tensor:
    return pipe(
        args.prompt,
        num_inference_steps=args.steps,
        audio_length_in_s=args.seconds,
        guidance_scale=args.guidance,
        output_type="pt",
        generator=torch.Generator().manual_seed(args.seed),
    ).audios


def bench_one(pipe, args, scheduler: str, config: sadakit.SADAConfig) -> dict:
    pipe.scheduler = SCHEDULERS[scheduler](pipe.scheduler.config)
    timing = time_pair(pipe, lambda: run(pipe, args), args.repeats, config)
    base, out, rep = timing.baseline, timing.accelerated, timing.report
    tb, ts = timing.baseline_s, timing.accelerated_s
    fidelity = audio_fidelity(out, base, pipeline_sample_rate(pipe))
    return {
        "scheduler": scheduler,
        "steps": args.steps,
        "calls_computed": rep.network_calls,
        "partial_calls": rep.partial_calls,
        "tokens_computed": f"{100.0 * rep.tokens_computed / max(rep.tokens_total, 1):.0f}%",
        "baseline_s": tb,
        "sada_s": ts,
        "speedup": tb / ts,
        "overhead_ms_per_call": rep.overhead_ms_per_call,
        "flops_saved": rep.flops_saved_fraction,
        **fidelity,
        "decisions": rep.decisions,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=5.12)
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompt", default="a calm piano melody with soft strings")
    parser.add_argument("--schedulers", nargs="+", default=list(SCHEDULERS), choices=list(SCHEDULERS))
    parser.add_argument("--threads", type=int, default=2, help="torch threads (1 on a shared, loaded machine)")
    parser.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipe = tiny_musicldm_pipeline(size="medium")
    fix_musicldm(pipe)  # the baseline runs un-accelerated, so it needs the transformers-5 fix too
    rows = [bench_one(pipe, args, s, sadakit.default_config(pipe)) for s in args.schedulers]
    params = sum(p.numel() for p in pipe.unet.parameters()) / 1e6
    print(f"MusicLDM medium ({params:.1f}M UNet), {args.seconds} s audio at {pipeline_sample_rate(pipe)} Hz, "
          f"CFG {args.guidance}, {args.repeats} alternating repeats, medians, {args.threads} torch thread(s)")
    print()
    print("| scheduler | steps | UNet calls computed | partial calls | block tokens computed | baseline s | "
          "SADA s | speed-up | overhead ms/call | est. FLOPs saved | log-mel PSNR dB | LSD dB | SNR dB | "
          "spec. LPIPS |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        flops = "n/a" if r["flops_saved"] is None else f"{100 * r['flops_saved']:.0f}%"
        lpips = "n/a" if r["spectrogram_lpips"] is None else f"{r['spectrogram_lpips']:.3f}"
        print(f"| {r['scheduler']} | {r['steps']} | {r['calls_computed']} | {r['partial_calls']} | "
              f"{r['tokens_computed']} | {r['baseline_s']:.2f} | {r['sada_s']:.2f} | {r['speedup']:.2f}x | "
              f"{r['overhead_ms_per_call']:.2f} | {flops} | {r['log_mel_psnr']:.1f} | {r['lsd']:.2f} | "
              f"{r['snr']:.1f} | {lpips} |")
    config = sadakit.default_config(pipe)
    print(f"\nSADA config (family defaults): late_phase_start={config.late_phase_start}, "
          f"late_phase_interval={config.late_phase_interval}, late_phase_order={config.late_phase_order}, "
          f"warmup_calls={config.warmup_calls}, final_calls={config.final_calls}, "
          f"token_resolutions={config.token_resolutions!r}, max_token_fraction={config.max_token_fraction}")
    for r in rows:
        print(f"\n{r['scheduler']} decisions: {r['decisions']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
