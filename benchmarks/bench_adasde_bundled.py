"""AdaSDE on the bundled shapes model against diffusers' solvers at the same NFE.

A trained text-to-image model, not an analytic testbed: coefficients are distilled through
the unmodified ``StableDiffusionPipeline`` (``sadakit.adasde.distill_pipeline``: its prompts,
its CFG), then loaded with ``AdaSDEScheduler.from_file`` and sampled by the same pipeline.
Every row uses the same prompts and per-image seeds; fidelity is measured against the
pipeline's default 50-step Euler output and prompt adherence by the independent classifier.

    python benchmarks/bench_adasde_bundled.py --nfe 5 7 --prompts 48 --threads 1

Coefficients are cached in ``sadakit/bundled/models/shapes-adasde/`` (``--fresh`` redistils);
the distillation time is printed and stored in each file's metadata.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from sadakit.adasde import AdaSDEScheduler, DistillConfig, distill_pipeline, load_coefficients
from sadakit.bundled import DEFAULT_GUIDANCE, DEFAULT_STEPS, eval_prompts, generate, load_shapes_pipeline, prompt_adherence
from sadakit.bundled import data_shapes
from sadakit.bundled.shapes_adasde import SHAPES_ADASDE_DIR, SHAPES_MODEL_ID, shapes_adasde_path
from sadakit.metrics.image import psnr

COEFF_DIR = SHAPES_ADASDE_DIR
MODEL_ID = SHAPES_MODEL_ID
SOLVERS = {
    "euler": "EulerDiscreteScheduler",
    "dpm++2m": "DPMSolverMultistepScheduler",
    "unipc": "UniPCMultistepScheduler",
    "ddim": "DDIMScheduler",
}


def ensure_coefficients(pipe, nfe: int, gamma_max: float, solver: str, args: argparse.Namespace) -> Path:
    path = shapes_adasde_path(nfe, solver, deterministic=gamma_max == 0, root=Path(args.coeff_dir))
    if path.exists() and not args.fresh:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    prompts = [label.prompt for label in data_shapes.all_labels()]
    cfg = DistillConfig(
        nfe=nfe, solver=solver, gamma_max=gamma_max, iterations=args.iterations, batch_size=args.batch,
        teacher_factor=args.teacher_factor, checkpoint_every=10, seed=args.seed,
    )
    t0 = time.perf_counter()
    res = distill_pipeline(
        pipe, prompts, cfg, guidance_scale=DEFAULT_GUIDANCE, model=MODEL_ID, output=path,
        log_path=path.with_suffix(".jsonl"), resume=not args.fresh, progress=args.progress,
    )
    ckpt = path.with_name(path.stem + ".ckpt.safetensors")
    ckpt.unlink(missing_ok=True)  # the shipped file is the result; the checkpoint only served resuming
    print(
        f"[distill] {solver} NFE={nfe} gamma_max={gamma_max}: loss {res.initial_loss:.4g} -> {res.losses[-1]:.4g} in "
        f"{time.perf_counter() - t0:.0f} s ({cfg.iterations} it x {cfg.batch_size} samples, teacher x{cfg.teacher_factor})",
        file=sys.stderr, flush=True,
    )
    return path


def run_rows(args: argparse.Namespace) -> list[dict]:
    import diffusers

    pipe = load_shapes_pipeline()
    pipe.set_progress_bar_config(disable=True)
    base_scheduler = pipe.scheduler
    prompts = eval_prompts(args.prompts)
    t0 = time.perf_counter()
    reference = generate(pipe, prompts, seed=args.seed, num_inference_steps=DEFAULT_STEPS)
    ref_seconds = time.perf_counter() - t0
    ref_adh = prompt_adherence(reference, prompts)
    rows = [{"method": f"euler (default, {DEFAULT_STEPS} steps)", "nfe": DEFAULT_STEPS, "psnr": float("inf"),
             "adherence": ref_adh.all_correct, "position": ref_adh.position, "seconds": ref_seconds}]

    def measure(name: str, nfe: int) -> None:
        t0 = time.perf_counter()
        images = generate(pipe, prompts, seed=args.seed, num_inference_steps=nfe)
        seconds = time.perf_counter() - t0
        adh = prompt_adherence(images, prompts)
        rows.append({"method": name, "nfe": nfe, "psnr": float(psnr(images, reference)), "adherence": adh.all_correct,
                     "position": adh.position, "seconds": seconds})
        print(f"  {name:>22} NFE={nfe}: PSNR {rows[-1]['psnr']:.2f} dB, adherence {adh.all_correct:.1%}", file=sys.stderr)

    for nfe in args.nfe:
        for label, cls_name in SOLVERS.items():
            pipe.scheduler = getattr(diffusers, cls_name).from_config(base_scheduler.config)
            measure(label, nfe)
        for solver in args.solvers:
            name = "adasde" if solver == "adasde" else f"learned churn + {solver}"
            for gamma_max, label in ((args.gamma_max, name), (0.0, f"{name}, gamma=0")):
                if gamma_max == 0.0 and not (args.ablation and solver == "adasde"):
                    continue
                pipe.scheduler = base_scheduler
                try:
                    path = ensure_coefficients(pipe, nfe, gamma_max, solver, args)
                except ValueError as err:  # e.g. an NFE this solver form cannot reach
                    print(f"  skip {label} NFE={nfe}: {err}", file=sys.stderr)
                    continue
                pipe.scheduler = AdaSDEScheduler.from_file(
                    path, base_scheduler, model=MODEL_ID, guidance_scale=DEFAULT_GUIDANCE
                )
                measure(label, nfe)
                rows[-1]["distill_seconds"] = load_coefficients(path).meta.training.get("seconds")
        pipe.scheduler = base_scheduler
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "| method | NFE | PSNR dB vs 50-step | adherence (all three) | position | wall s | distil s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        psnr_txt = "ref" if r["psnr"] == float("inf") else f"{r['psnr']:.2f}"
        dist = f"{r['distill_seconds']:.0f}" if r.get("distill_seconds") else ""
        lines.append(
            f"| {r['method']} | {r['nfe']} | {psnr_txt} | {r['adherence']:.1%} | {r['position']:.1%} | {r['seconds']:.1f} | {dist} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nfe", nargs="+", type=int, default=[5, 7])
    p.add_argument("--prompts", type=int, default=48, help="evaluation prompts (of the 48)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--iterations", type=int, default=60)
    p.add_argument("--batch", type=int, default=24, help="distillation samples per iteration")
    p.add_argument("--teacher-factor", type=int, default=4)
    p.add_argument("--gamma-max", type=float, default=0.3)
    p.add_argument("--ablation", action="store_true", help="also distil and run AdaSDE's gamma = 0 ablation")
    p.add_argument("--solvers", nargs="+", default=["adasde", "euler"], choices=["adasde", "euler", "heun", "midpoint"],
                   help="AdaSDE's own step and/or the learned churn in front of a base solver")
    p.add_argument("--fresh", action="store_true")
    p.add_argument("--coeff-dir", default=str(COEFF_DIR), help="where coefficient files are cached")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = run_rows(args)
    print(markdown(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
