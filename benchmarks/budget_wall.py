"""Time of a budget plan against the baseline and "fewer steps" at the same calls, robust to a
busy machine (docs/frontier.md, "Wall time against FLOPs").

Each method gets its own copy of the pipeline, accelerated once and warmed up, so the timed
runs measure generation only (the bench accelerates before every run). Times are the CPU time
of the generating thread (``time.thread_time``), the minimum over interleaved repeats: on a
shared machine wall time also counts the other processes' turns, thread time does not.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/budget_wall.py --pipeline bundled:shapes \
        --budgets 0.5 0.33 0.25 --repeats 7 --images-per-prompt 8
"""

from __future__ import annotations

import argparse
import time

import torch

import sadakit
from sadakit.loading import default_call_kwargs, default_prompts, load_pipeline
from sadakit.registry import output_kind_of


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", default="bundled:shapes")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--budgets", nargs="+", type=float, default=[0.5, 0.33, 0.25])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--spread", default="warmup", choices=["warmup", "even"])
    parser.add_argument("--images-per-prompt", type=int, default=1, help="outputs per prompt (waveforms for audio)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    prompts = default_prompts(args.pipeline)
    kwargs = {**default_call_kwargs(args.pipeline), "prompt": prompts, "output_type": "latent"}
    final = {} if args.spread == "warmup" else {"final_calls": 0}
    runs: dict[str, tuple] = {"baseline": (load_pipeline(args.pipeline), args.steps)}
    if args.images_per_prompt > 1:
        audio = output_kind_of(runs["baseline"][0]) == "audio"
        kwargs["num_waveforms_per_prompt" if audio else "num_images_per_prompt"] = args.images_per_prompt
    for b in args.budgets:
        calls = max(1, round(b * args.steps))
        runs[f"fewer-steps {calls}"] = (load_pipeline(args.pipeline), calls)
        pipe = load_pipeline(args.pipeline)
        sadakit.accelerate(pipe, sadakit.SADAConfig(budget=b, budget_spread=args.spread, **final))
        runs[f"budget {b:g}"] = (pipe, args.steps)

    def run(name: str) -> float:
        pipe, steps = runs[name]
        started = time.thread_time()
        pipe(**kwargs, num_inference_steps=steps, generator=torch.Generator().manual_seed(0))
        return time.thread_time() - started

    for name in runs:  # warm-up: allocations, and SADA's one flop-counted call per shape
        run(name)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name in runs:
            times[name].append(run(name))
    base = min(times["baseline"])
    print(f"{args.pipeline}, {args.steps} steps, {len(prompts)} prompts x {args.images_per_prompt}, "
          f"thread CPU time, min of {args.repeats}")
    print("| method | denoiser calls | 1 / calls ratio | speed-up | sadakit host ms per call |")
    print("|---|---|---|---|---|")
    for name, (pipe, steps) in runs.items():
        rep = sadakit.report(pipe) if sadakit.is_accelerated(pipe) else None
        calls = rep.network_calls if rep is not None else steps
        host = f"{rep.overhead_ms_per_call:.2f}" if rep is not None else ""
        print(f"| {name} | {calls} | {args.steps / calls:.2f}x | {base / min(times[name]):.2f}x | {host} |")


if __name__ == "__main__":
    main()
