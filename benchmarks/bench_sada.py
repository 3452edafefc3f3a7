"""Baseline vs SADA on one pipeline under several schedulers: what the runtime did, and its cost.

Prints one Markdown table: denoiser calls computed, rows computed, partial calls, ControlNet
runs, block tokens computed, wall-time ratio measured in one run (the harness: warm-ups,
baseline and SADA alternate, medians), sadakit's overhead per call, FLOPs vs baseline and the
fidelity of the SADA output against the baseline (the scorer of the pipeline's kind of output).
For the side-by-side with the peer accelerators use ``sadakit bench`` instead.

    .venv/bin/python benchmarks/bench_sada.py --pipeline tiny:sdxl:medium --steps 50 --repeats 2 --schedulers euler dpm++2m
    .venv/bin/python benchmarks/bench_sada.py --pipeline tiny:musicldm:medium --steps 30 --threads 1 --guidance 2 --prompts "a calm piano melody with soft strings" --schedulers ddim dpm++2m
    .venv/bin/python benchmarks/bench_sada.py --pipeline tiny:flux:medium --steps 20 --repeats 1 --schedulers flow-euler flow-euler-stochastic
    .venv/bin/python benchmarks/bench_sada.py --pipeline tiny:sdxl-controlnet:medium --steps 20 --repeats 1 --guidance 5
"""

from __future__ import annotations

import diffusers
import torch

from sadakit.bench.harness import baseline_vs_sada
from sadakit.bench.runner import call_pipeline
from sadakit.bench.scorers import fidelity_for
from sadakit.bench.script_args import script_parser, start, write_json
from sadakit.loading import default_call_kwargs, load_pipeline
from sadakit.registry import family_of

#: ``--schedulers`` names: how each is made from the pipeline's own scheduler config.
SCHEDULERS = {
    "default": lambda c: None,
    "euler": lambda c: diffusers.EulerDiscreteScheduler.from_config(c),
    "dpm++2m": lambda c: diffusers.DPMSolverMultistepScheduler.from_config(c),
    "unipc": lambda c: diffusers.UniPCMultistepScheduler.from_config(c),
    "ddim": lambda c: diffusers.DDIMScheduler.from_config(c),
    "flow-euler": lambda c: diffusers.FlowMatchEulerDiscreteScheduler.from_config(c),
    "flow-euler-stochastic": lambda c: diffusers.FlowMatchEulerDiscreteScheduler.from_config(c, stochastic_sampling=True),
}


def _percent(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.0f}%" if whole else "-"


def bench_one(pipe, call_kwargs: dict, scheduler: str, repeats: int, seed: int) -> dict:
    """One scheduler: the harness's baseline vs SADA (family defaults), the report's numbers."""
    original = pipe.scheduler
    made = SCHEDULERS[scheduler](original.config)
    pipe.scheduler = made if made is not None else original
    try:
        base, sada = baseline_vs_sada(pipe, lambda kwargs: call_pipeline(pipe, kwargs),
                                      lambda: {**call_kwargs, "generator": torch.Generator().manual_seed(seed)},
                                      repeats=repeats)
    finally:
        pipe.scheduler = original
    rep = sada.report
    return {
        "scheduler": scheduler if made is not None else type(original).__name__,
        "calls_computed": f"{rep['network_calls']}/{rep['denoiser_calls']}",
        "rows_computed": _percent(sum(rep["per_sample_computed"]), rep["denoiser_calls"] * rep["batch_size"]),
        "partial_calls": rep["partial_calls"],
        "control_calls_run": rep["control_calls_run"] or "-",
        "tokens_computed": _percent(rep["tokens_computed"], rep["tokens_total"]),
        "baseline_s": base.median_s, "sada_s": sada.median_s, "speedup": base.median_s / sada.median_s,
        "overhead_ms_per_call": rep["overhead_ms_per_call"], "flops_ratio": rep["flops_ratio"],
        "fidelity": fidelity_for(pipe)(sada.output, base.output), "decisions": rep["decisions"],
    }


def _cell(value) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def main() -> None:
    parser = script_parser(__doc__, repeats=3)
    parser.add_argument("--pipeline", default="tiny:sdxl:medium", help="as for sadakit bench (tiny:*, bundled:*, a hub id)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--prompts", nargs="+", default=["a red square on the left"], help="one batch")
    parser.add_argument("--guidance", type=float, default=None)
    parser.add_argument("--schedulers", nargs="+", default=["default"], choices=list(SCHEDULERS))
    args = parser.parse_args()
    start(args)
    pipe = load_pipeline(args.pipeline)
    pipe.set_progress_bar_config(disable=True)
    if family_of(pipe) == "musicldm":  # the baseline runs un-accelerated, so it needs the transformers-5 fix too
        from sadakit.plugins.audio import fix_musicldm

        fix_musicldm(pipe)
    call_kwargs = {**default_call_kwargs(args.pipeline), "prompt": args.prompts, "num_inference_steps": args.steps}
    if args.guidance is not None:
        call_kwargs["guidance_scale"] = args.guidance
    rows = [bench_one(pipe, call_kwargs, s, args.repeats, args.seed) for s in args.schedulers]
    params = sum(p.numel() for p in (getattr(pipe, "transformer", None) or pipe.unet).parameters()) / 1e6
    print(f"{args.pipeline} ({type(pipe).__name__}, {params:.1f}M denoiser), {args.steps} steps, batch {len(args.prompts)}, "
          f"{args.repeats} interleaved repeats (medians), {args.threads} torch thread(s)\n")
    keys = list(rows[0]["fidelity"])
    head = ["scheduler", "calls computed", "rows computed", "partial calls", "ControlNet runs", "block tokens computed",
            "baseline s", "SADA s", "speed-up", "overhead ms/call", "FLOPs vs baseline"] + keys
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r in rows:
        cells = [r["scheduler"], r["calls_computed"], r["rows_computed"], r["partial_calls"], r["control_calls_run"],
                 r["tokens_computed"], f"{r['baseline_s']:.2f}", f"{r['sada_s']:.2f}", f"{r['speedup']:.2f}x",
                 f"{r['overhead_ms_per_call']:.2f}", _cell(r["flops_ratio"])] + [_cell(r["fidelity"][k]) for k in keys]
        print("| " + " | ".join(str(c) for c in cells) + " |")
    for r in rows:
        print(f"\n{r['scheduler']} decisions: {r['decisions']}")
    write_json(args, rows)


if __name__ == "__main__":
    main()
