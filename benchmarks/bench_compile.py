"""SADA with and without ``torch.compile`` of the denoiser: do the two speed-ups compose?

Three copies of one pipeline (same weights): one eager (run with and without SADA), one whose
denoiser is compiled in place (``module.compile(backend=...)``), one accelerated and then
compiled. Each repeat runs, in turn, eager baseline, eager SADA, compiled baseline, compiled SADA (medians of the repeats; compile time is the first compiled
call of each variant, reported apart). Fidelity: PSNR of each output against the eager
baseline. Also prints the number of graphs dynamo built and whether a later generation
built any more (it should not: the decisions run outside the compiled graph).

    .venv/bin/python benchmarks/bench_compile.py --pipeline sdxl-medium --repeats 3 [--fullgraph]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch._dynamo.utils import counters

import sadakit
from sadakit.metrics.image import psnr


def build(name: str):
    """(pipeline, denoiser attribute, call kwargs)."""
    if name == "sdxl-medium":
        from sadakit.testing.pipelines import tiny_sdxl_pipeline

        return tiny_sdxl_pipeline(size="medium"), "unet", {"height": 256, "width": 256, "guidance_scale": 5.0}
    if name == "flux-medium":
        from sadakit.testing.pipelines import tiny_flux_pipeline

        return tiny_flux_pipeline(size="medium"), "transformer", {"height": 256, "width": 256, "max_sequence_length": 64}
    if name == "shapes":
        from sadakit.bundled import shapes

        return shapes.load_pipeline(), "unet", {"guidance_scale": 5.0, "num_images_per_prompt": 8}
    raise SystemExit(f"--pipeline {name!r}: allowed sdxl-medium, flux-medium, shapes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", default="sdxl-medium")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backend", default="inductor")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompt", default="a red circle in the top left")
    parser.add_argument("--fullgraph", action="store_true", help="compile with fullgraph=True")
    parser.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    eager, denoiser, kw = build(args.pipeline)
    # one copy per compiled variant: the hooks are traced with the network, so toggling SADA on a
    # compiled copy would compile it again every time (docs/gpu.md#torch-compile)
    compiled, _, _ = build(args.pipeline)
    compiled_sada, _, _ = build(args.pipeline)
    sadakit.accelerate(compiled_sada)
    for pipe in (compiled, compiled_sada):
        getattr(pipe, denoiser).compile(backend=args.backend, fullgraph=args.fullgraph)
    kw = {**kw, "prompt": args.prompt, "num_inference_steps": args.steps, "output_type": "pt"}

    def run(pipe, sada: bool):
        if pipe is eager:
            if sada:
                sadakit.accelerate(pipe)
            else:
                sadakit.remove(pipe)
        started = time.perf_counter()
        out = pipe(generator=torch.Generator().manual_seed(args.seed), **kw).images
        return out, time.perf_counter() - started

    variants = [("eager", eager, False), ("eager + SADA", eager, True),
                ("compiled", compiled, False), ("compiled + SADA", compiled_sada, True)]
    first = {}
    for label, pipe, sada in variants:  # warm-up; for the compiled copy this is the compilation
        first[label] = run(pipe, sada)[1]
    graphs_after_warmup = counters["stats"]["unique_graphs"]
    times = {label: [] for label, _, _ in variants}
    outputs = {}
    calls = {}
    for _ in range(args.repeats):
        for label, pipe, sada in variants:
            outputs[label], seconds = run(pipe, sada)
            times[label].append(seconds)
            if sada:
                calls[label] = sadakit.report(pipe).network_calls
    graphs_after = counters["stats"]["unique_graphs"]
    reference = outputs["eager"]
    base_s = statistics.median(times["eager"])
    rows = []
    for label, _, sada in variants:
        median = statistics.median(times[label])
        rows.append({
            "variant": label, "calls": calls.get(label, args.steps), "first_call_s": first[label], "median_s": median,
            "speedup_vs_eager": base_s / median,
            "psnr_vs_eager_db": psnr(outputs[label], reference),
        })
    print(f"\n{args.pipeline}, {args.steps} steps, backend {args.backend}, {args.threads} threads, "
          f"{args.repeats} alternating repeats (medians)\n")
    print("| variant | denoiser calls | first run s (compiles) | median s | speed-up vs eager baseline | PSNR dB vs eager baseline |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['calls']}/{args.steps} | {r['first_call_s']:.1f} | {r['median_s']:.2f} | "
              f"{r['speedup_vs_eager']:.2f}x | {r['psnr_vs_eager_db']:.1f} |")
    print(f"\ndynamo graphs: {graphs_after_warmup} after the warm-up, {graphs_after} after the repeats")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"rows": rows, "graphs_after_warmup": graphs_after_warmup, "graphs_after": graphs_after}, fh, indent=1)


if __name__ == "__main__":
    main()
