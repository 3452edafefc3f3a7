"""Where SADA's fidelity goes past 2x, and what each knob setting buys (docs/frontier.md).

Two modes on a bundled model, both against the pipeline's own full-step output, on the bench's
default prompts (batch ``--images-per-prompt``, seed 0, PSNR the median over prompts as in
``sadakit bench``):

* ``sweep``: every ``--configs`` entry (``name=field:value,field:value``, SADAConfig fields) and
  every ``--fewer`` step count: denoiser FLOPs fraction, calls computed, PSNR, adherence.
* ``trace``: one config, call by call: the phase and decision, how many calls back the
  extrapolation's newest node is (gap), the relative error of the extrapolated x0 against the
  network's x0 on the very same input, and how far the state has drifted from the full-step
  trajectory.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sada_frontier.py sweep --pipeline bundled:shapes \
        --configs i3=late_phase_interval:3 i6=late_phase_interval:6 --fewer 25 20 13
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sada_frontier.py trace --pipeline bundled:shapes \
        --config late_phase_interval:6
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

import torch

import sadakit
from sadakit.bench.runner import call_pipeline
from sadakit.bench.scorers import fidelity_for, judge_for
from sadakit.core import criterion
from sadakit.core.parameterization import to_flow
from sadakit.loading import default_call_kwargs, default_prompts, load_pipeline
from sadakit.registry import output_kind_of
from sadakit.runtime import decision as decision_module


def parse_config(text: str) -> sadakit.SADAConfig:
    """``field:value,field:value`` -> SADAConfig (values as Python literals, ``None`` allowed)."""
    import ast

    fields: dict[str, Any] = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition(":")
        try:
            fields[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            fields[key] = value
    return sadakit.SADAConfig(**fields)


def run(pipe: Any, name: str, prompt: str, batch: int, steps: int, seed: int = 0) -> torch.Tensor:
    kwargs = {**default_call_kwargs(name), "prompt": prompt, "num_inference_steps": steps,
              "generator": torch.Generator().manual_seed(seed)}
    if batch > 1:
        audio = output_kind_of(pipe) == "audio"
        kwargs["num_waveforms_per_prompt" if audio else "num_images_per_prompt"] = batch
    return call_pipeline(pipe, kwargs)


def score(pipe: Any, name: str, test: torch.Tensor, ref: torch.Tensor, prompt: str, scorer) -> dict:
    f = fidelity_for(pipe)(test, ref)
    out = {"psnr": f.get("psnr_db", f.get("log_mel_psnr"))}
    if scorer is not None:
        judged = scorer(test, prompt)  # shapes: "adherence"; notes: "pitch_adherence" (and timbre)
        out["adherence"] = judged.get("adherence", judged.get("pitch_adherence"))
    return out


def sweep(args: argparse.Namespace) -> None:
    pipe = load_pipeline(args.pipeline)
    prompts = args.prompts or default_prompts(args.pipeline)
    scorer = judge_for(args.pipeline)
    refs = {p: run(pipe, args.pipeline, p, args.images_per_prompt, args.steps, args.seed) for p in prompts}
    rows = []
    for steps in args.fewer:
        scores = [score(pipe, args.pipeline, run(pipe, args.pipeline, p, args.images_per_prompt, steps, args.seed), refs[p], p, scorer)
                  for p in prompts]
        rows.append((f"fewer-steps {steps}", steps / args.steps, steps, scores))
    for spec in args.configs:
        label, _, text = spec.partition("=")
        config = parse_config(text)
        scores, flops, calls = [], [], []
        for p in prompts:
            sadakit.accelerate(pipe, config)
            try:
                out = run(pipe, args.pipeline, p, args.images_per_prompt, args.steps, args.seed)
                rep = sadakit.report(pipe)
            finally:
                sadakit.remove(pipe)
            scores.append(score(pipe, args.pipeline, out, refs[p], p, scorer))
            flops.append(1.0 - (rep.flops_saved_fraction or 0.0))
            calls.append(rep.network_calls)
        rows.append((label, statistics.median(flops), statistics.median(calls), scores, rep.decisions))
    print(f"{args.pipeline}, {args.steps} steps, {len(prompts)} prompts x {args.images_per_prompt}, seed {args.seed}")
    print("| setting | denoiser FLOPs | calls | PSNR dB (median) | adherence | decisions |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        label, fl, calls, scores = row[:4]
        dec = row[4] if len(row) > 4 else ""
        psnr = statistics.median(s["psnr"] for s in scores)
        adh = statistics.mean(s["adherence"] for s in scores) if "adherence" in scores[0] else float("nan")
        print(f"| {label} | {fl:.2f} | {calls:g} | {psnr:.1f} | {adh:.2f} | `{dec}` |")


def trace(args: argparse.Namespace) -> None:
    """Per call: phase, decision, gap, extrapolation error on SADA's own input, drift from the
    full-step trajectory."""
    pipe = load_pipeline(args.pipeline)
    prompt = default_prompts(args.pipeline)[args.prompt_index]
    unet = pipe.unet
    base_inputs: list[torch.Tensor] = []
    handle = unet.register_forward_pre_hook(lambda m, a, k: base_inputs.append(k.get("sample", a[0] if a else None).detach().clone()),
                                            with_kwargs=True)
    try:
        ref = run(pipe, args.pipeline, prompt, args.images_per_prompt, args.steps, args.seed)
    finally:
        handle.remove()
    config = parse_config(args.config)
    seen: list[dict] = []
    original = decision_module.Decider.decide

    def recording(self, state, x_model, timestep, arguments, eligible_grids):
        nodes = state.newest_nodes()
        stable = None
        if len(nodes) == 3:  # what the criterion would say, asked or not
            lvl = state.parameterization.level(timestep, x_model.device)
            m = criterion.stability_momentum(to_flow(x_model, lvl), nodes[0].x_flow, [n.drift for n in nodes],
                                             [n.tau for n in nodes], lvl.tau)
            stable = float((criterion.group_scores(criterion.sample_scores(m), state.groups) <= 0).float().mean())
        d = original(self, state, x_model, timestep, arguments, eligible_grids)
        plan = d.plan
        seen.append({"n": state.call_index, "phase": self.phase(state, state.call_index), "x": x_model.detach().clone(),
                     "t": timestep, "args": {k: v for k, v in arguments.items() if k not in ("self",)},
                     "skipped": list(plan.skipped_groups), "x0_hat": None if plan.x0_hat is None else plan.x0_hat.clone(),
                     "times": None if state.value_times is None else state.value_times[:, 0].tolist(),
                     "tau": plan.tau_host, "stable": stable})
        return d

    decision_module.Decider.decide = recording
    sadakit.accelerate(pipe, config)
    try:
        out = run(pipe, args.pipeline, prompt, args.images_per_prompt, args.steps, args.seed)
        rep = sadakit.report(pipe)
    finally:
        sadakit.remove(pipe)
        decision_module.Decider.decide = original
    param = sadakit.registry.find_plugin(pipe).parameterization(pipe)
    f = score(pipe, args.pipeline, out, ref, prompt, judge_for(args.pipeline))
    print(f"{args.pipeline} {args.steps} steps, prompt {prompt!r} x {args.images_per_prompt}: {rep.network_calls} calls, "
          f"PSNR {f['psnr']:.1f} dB, adherence {f.get('adherence', float('nan')):.2f}\n{rep.decisions}")
    scorer = judge_for(args.pipeline)
    if scorer is not None:
        per_image = [scorer(out[i: i + 1], prompt)["adherence"] for i in range(out.shape[0])]
        print("adherence per image:", per_image)
    print("| call | tau | phase | decision | gap to newest node | node span | rel. x0 error | rel. state drift | criterion: groups stable |")
    print("|---|---|---|---|---|---|---|---|---|")
    last_computed = None
    for rec, x_base in zip(seen, base_inputs):
        lvl = param.level(rec["t"], rec["x"].device)
        drift = float((rec["x"] - x_base).norm() / x_base.norm())
        skipped = bool(rec["skipped"])
        err = span = gap = ""
        if rec["x0_hat"] is not None and rec["times"] is not None:
            with torch.no_grad():
                kwargs = dict(rec["args"])
                true_out = unet(**{**kwargs, "return_dict": False})[0]
            x0 = param.x0_from_output(rec["x"].float(), true_out.float(), lvl)
            err = f"{float((rec['x0_hat'] - x0).norm() / x0.norm()):.4f}"
            times = rec["times"]
            span = f"{times[0] - times[-1]:+.3f}" if len(times) > 1 else ""
            gap = f"{rec['n'] - last_computed}" if last_computed is not None else ""
        if not skipped:
            last_computed = rec["n"]
        stable = "" if rec["stable"] is None else f"{rec['stable']:.2f}"
        print(f"| {rec['n']} | {rec['tau']:.3f} | {rec['phase']} | {'S' if skipped else 'F'} | {gap} | {span} | {err} | {drift:.4f} | {stable} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    for mode in ("sweep", "trace"):
        p = sub.add_parser(mode)
        p.add_argument("--pipeline", default="bundled:shapes")
        p.add_argument("--steps", type=int, default=50)
        p.add_argument("--images-per-prompt", type=int, default=8)
        p.add_argument("--seed", type=int, default=0)
        if mode == "sweep":
            p.add_argument("--configs", nargs="*", default=[])
            p.add_argument("--fewer", nargs="*", type=int, default=[])
            p.add_argument("--prompts", nargs="*", default=None, help="default: the bench's 4 prompts")
        else:
            p.add_argument("--config", default="")
            p.add_argument("--prompt-index", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    (sweep if args.mode == "sweep" else trace)(args)


if __name__ == "__main__":
    main()
