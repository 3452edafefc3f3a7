"""AdaSDE on a bundled trained model against diffusers' solvers at the same NFE.

Trained models, not an analytic testbed: coefficients are distilled through the unmodified
pipeline (``sadakit.adasde.distill_pipeline``: its prompts, its CFG), then loaded with
``AdaSDEScheduler.from_file`` and sampled by the same pipeline. Every row uses the same
prompts and per-sample seeds; fidelity is measured against the pipeline's default 50-step
output, prompt adherence independently of the model:

* ``--model shapes`` (StableDiffusionPipeline, 32x32): PSNR against 50 Euler steps, the
  shipped classifier's adherence (shape, colour and position all right) and position.
* ``--model notes`` (MusicLDMPipeline, 1.28 s at 16 kHz): log-mel PSNR against 50 DDIM
  steps, pitch and timbre adherence of the audio and pitch adherence of the log-mel
  (:func:`sadakit.bundled.notes.adherence`). More clips than the 16 prompts cycle them
  (clip ``i`` has seed ``seed + i``).

    python benchmarks/bench_adasde_bundled.py --nfe 5 7 --prompts 48 --threads 1
    python benchmarks/bench_adasde_bundled.py --model notes --nfe 5 7 --prompts 32 --iterations 24 --batch 8 --threads 1

Coefficients are cached in ``sadakit/bundled/models/<model>-adasde/`` (``--fresh`` redistils);
the distillation time is printed and stored in each file's metadata.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from sadakit.adasde import AdaSDEScheduler, DistillConfig, distill_pipeline, load_coefficients
from sadakit.bench.harness import ForwardCounter
from sadakit.bundled.adasde_files import BundledAdaSDE, bundled_adasde

SOLVERS = {
    "euler": "EulerDiscreteScheduler",
    "dpm++2m": "DPMSolverMultistepScheduler",
    "unipc": "UniPCMultistepScheduler",
    "ddim": "DDIMScheduler",
}
BATCH = 16  # per pipeline call, as both models' generate functions default to


@dataclass(frozen=True)
class BenchModel:
    """What the bench needs to know about one bundled model."""

    spec: BundledAdaSDE
    load: Callable[[], Any]
    default_steps: int
    baseline_solver: str  # the scheduler the model ships with (its 50-step output is the reference)
    distill_prompts: list[str]
    distill_call_kwargs: dict[str, Any]
    eval_prompts: Callable[[int], list[str]]
    generate: Callable[[Any, list[str], int, int], Any]  # (pipe, prompts, seed, steps) -> outputs
    measure: Callable[[Any, Any, list[str]], dict[str, float]]  # (outputs, reference, prompts) -> metrics
    columns: tuple[tuple[str, str, str], ...]  # (metric key, table header, format)


def shapes_model() -> BenchModel:
    from sadakit.bundled import data_shapes, shapes
    from sadakit.bundled.adasde_files import SHAPES
    from sadakit.metrics.image import psnr

    def measure(images: torch.Tensor, reference: torch.Tensor, prompts: list[str]) -> dict[str, float]:
        adh = shapes.adherence(images, prompts)
        return {"psnr": float(psnr(images, reference)), "adherence": adh.all_correct, "position": adh.position}

    return BenchModel(
        spec=SHAPES, load=shapes.load_pipeline, default_steps=shapes.DEFAULT_STEPS, baseline_solver="euler",
        distill_prompts=[label.prompt for label in data_shapes.all_labels()], distill_call_kwargs={},
        eval_prompts=shapes.eval_prompts,
        generate=lambda pipe, prompts, seed, steps: shapes.generate(pipe, prompts, seed=seed, num_inference_steps=steps),
        measure=measure,
        columns=(("psnr", "PSNR dB vs 50-step", ".2f"), ("adherence", "adherence (all three)", ".1%"),
                 ("position", "position", ".1%")),
    )


def notes_model() -> BenchModel:
    from sadakit.bundled import notes
    from sadakit.bundled.adasde_files import NOTES
    from sadakit.metrics.audio import log_mel_psnr

    def prompts_for(n: int) -> list[str]:
        every = notes.eval_prompts()
        return [every[i % len(every)] for i in range(n)]

    def measure(out: tuple[torch.Tensor, torch.Tensor], reference: tuple[torch.Tensor, torch.Tensor],
                prompts: list[str]) -> dict[str, float]:
        adh = notes.adherence(out[0], prompts, out[1])
        return {"psnr": log_mel_psnr(out[0], reference[0], notes.SAMPLE_RATE), "pitch": adh.pitch, "timbre": adh.timbre,
                "both": adh.both, "mel_pitch": adh.mel_pitch, "semitones": adh.median_abs_semitones}

    return BenchModel(
        spec=NOTES, load=notes.load_pipeline, default_steps=notes.DEFAULT_STEPS, baseline_solver="ddim",
        distill_prompts=notes.eval_prompts(), distill_call_kwargs={"audio_length_in_s": notes.AUDIO_SECONDS},
        eval_prompts=prompts_for,
        generate=lambda pipe, prompts, seed, steps: notes.generate_with_mels(pipe, prompts, seed, steps),
        measure=measure,
        columns=(("psnr", "log-mel PSNR dB vs 50-step", ".2f"), ("pitch", "pitch (audio)", ".1%"),
                 ("timbre", "timbre", ".1%"), ("mel_pitch", "pitch (log-mel)", ".1%"),
                 ("semitones", "median abs semitones", ".2f")),
    )


MODELS = {"shapes": shapes_model, "notes": notes_model}


def ensure_coefficients(model: BenchModel, pipe: Any, nfe: int, gamma_max: float, solver: str,
                        args: argparse.Namespace, learn_grid: bool = False) -> Path:
    """The cached file for this setting, distilled first if missing (or ``--fresh``)."""
    path = model.spec.path(nfe, solver, deterministic=gamma_max == 0, root=Path(args.coeff_dir), learned_grid=learn_grid)
    if path.exists() and not args.fresh:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg = DistillConfig(
        nfe=nfe, solver=solver, gamma_max=gamma_max, iterations=args.iterations, batch_size=args.batch,
        teacher_factor=args.teacher_factor, checkpoint_every=10, seed=args.seed, learn_grid=learn_grid,
        grid_lr=args.grid_lr, step_weight=args.grid_step_weight if learn_grid else 1.0,
    )
    t0 = time.perf_counter()
    res = distill_pipeline(
        pipe, model.distill_prompts, cfg, guidance_scale=model.spec.guidance_scale, model=model.spec.model_id,
        call_kwargs=model.distill_call_kwargs, output=path, log_path=path.with_suffix(".jsonl"),
        resume=not args.fresh, progress=args.progress, sigma_max=model.spec.sigma_max,
    )
    ckpt = path.with_name(path.stem + ".ckpt.safetensors")
    ckpt.unlink(missing_ok=True)  # the shipped file is the result; the checkpoint only served resuming
    print(
        f"[distill] {model.spec.name} {solver} NFE={nfe} gamma_max={gamma_max} learn_grid={learn_grid}: loss {res.initial_loss:.4g} -> "
        f"{res.losses[-1]:.4g} in {time.perf_counter() - t0:.0f} s ({cfg.iterations} it x {cfg.batch_size} samples, "
        f"teacher x{cfg.teacher_factor})",
        file=sys.stderr, flush=True,
    )
    return path


def run_rows(model: BenchModel, args: argparse.Namespace) -> list[dict]:
    import diffusers

    pipe = model.load()
    pipe.set_progress_bar_config(disable=True)
    base_scheduler = pipe.scheduler
    prompts = model.eval_prompts(args.prompts)
    pipeline_calls = math.ceil(len(prompts) / BATCH)
    counter = ForwardCounter(pipe.unet)  # the NFE column is measured, not assumed

    def timed(steps: int) -> tuple[Any, float, float]:
        counter.count = 0
        t0 = time.perf_counter()
        out = model.generate(pipe, prompts, args.seed, steps)
        return out, time.perf_counter() - t0, counter.count / pipeline_calls

    reference, ref_seconds, ref_calls = timed(model.default_steps)
    rows = [{"method": f"{model.baseline_solver} (default, {model.default_steps} steps)", "nfe": model.default_steps,
             "calls": ref_calls, "seconds": ref_seconds, **model.measure(reference, reference, prompts)}]
    rows[0]["psnr"] = float("inf")

    def measure(name: str, nfe: int) -> None:
        out, seconds, calls = timed(nfe)
        rows.append({"method": name, "nfe": nfe, "calls": calls, "seconds": seconds,
                     **model.measure(out, reference, prompts)})
        metrics = ", ".join(f"{key} {rows[-1][key]:{fmt}}" for key, _, fmt in model.columns)
        print(f"  {name:>22} NFE={nfe} ({calls:g} calls): {metrics}", file=sys.stderr, flush=True)

    for nfe in args.nfe:
        for label, cls_name in ({} if args.only_learned else SOLVERS).items():
            pipe.scheduler = getattr(diffusers, cls_name).from_config(base_scheduler.config)
            measure(label, nfe)
        for solver, learn_grid in [(s, False) for s in args.solvers] + [(s, True) for s in args.learn_grid]:
            name = "adasde" if solver == "adasde" else f"learned churn + {solver}"
            name += ", learned grid" if learn_grid else ""
            settings = [(args.gamma_max, name if args.gamma_max > 0 else f"{name}, gamma=0")]
            if args.ablation and solver == "adasde" and args.gamma_max > 0:
                settings.append((0.0, f"{name}, gamma=0"))
            for gamma_max, label in settings:
                pipe.scheduler = base_scheduler
                try:
                    path = ensure_coefficients(model, pipe, nfe, gamma_max, solver, args, learn_grid)
                except ValueError as err:  # e.g. an NFE this solver form cannot reach
                    print(f"  skip {label} NFE={nfe}: {err}", file=sys.stderr)
                    continue
                pipe.scheduler = AdaSDEScheduler.from_file(
                    path, base_scheduler, model=model.spec.model_id, guidance_scale=model.spec.guidance_scale
                )
                measure(label, nfe)
                rows[-1]["distill_seconds"] = load_coefficients(path).meta.training.get("seconds")
        pipe.scheduler = base_scheduler
    counter.close()
    return rows


def markdown(model: BenchModel, rows: list[dict]) -> str:
    """One table: method, NFE, measured calls, speed-up vs the 50-step row, the model's metrics, times."""
    heads = [head for _, head, _ in model.columns]
    lines = [
        "| method | NFE | denoiser calls | speed-up | " + " | ".join(heads) + " | wall s | distil s |",
        "|---|---|---|---|" + "---|" * len(heads) + "---|---|",
    ]
    ref_seconds = rows[0]["seconds"]
    for r in rows:
        cells = []
        for key, _, fmt in model.columns:
            value = r.get(key)
            cells.append("ref" if value == float("inf") else "n/a" if value is None else f"{value:{fmt}}")
        dist = f"{r['distill_seconds']:.0f}" if r.get("distill_seconds") else ""
        lines.append(
            f"| {r['method']} | {r['nfe']} | {r['calls']:g} | {ref_seconds / r['seconds']:.1f}x | " + " | ".join(cells)
            + f" | {r['seconds']:.1f} | {dist} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="shapes", choices=sorted(MODELS), help="which bundled model")
    p.add_argument("--nfe", nargs="+", type=int, default=[5, 7])
    p.add_argument("--prompts", type=int, default=48,
                   help="evaluation samples (shapes: of its 48 prompts; notes: its 16 prompts, cycled)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--iterations", type=int, default=60)
    p.add_argument("--batch", type=int, default=24, help="distillation samples per iteration")
    p.add_argument("--teacher-factor", type=int, default=4)
    p.add_argument("--gamma-max", type=float, default=0.3)
    p.add_argument("--ablation", action="store_true", help="also distil and run AdaSDE's gamma = 0 ablation")
    p.add_argument("--solvers", nargs="*", default=["adasde", "euler"], choices=["adasde", "euler", "heun", "midpoint"],
                   help="AdaSDE's own step and/or the learned churn in front of a base solver")
    p.add_argument("--learn-grid", nargs="*", default=[], choices=["adasde", "euler", "heun", "midpoint"],
                   help="solver forms also distilled with the sigma grid learned (files named ...-lgrid)")
    p.add_argument("--grid-lr", type=float, default=0.05, help="Adam learning rate of the grid logits")
    p.add_argument("--grid-step-weight", type=float, default=0.0,
                   help="weight of the per-step terms in learned-grid runs (0: the last step only, the testbed's best)")
    p.add_argument("--only-learned", action="store_true", help="skip the diffusers rows (quick experiments)")
    p.add_argument("--fresh", action="store_true")
    p.add_argument("--coeff-dir", default=None, help="where coefficient files are cached (default: the shipped directory)")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = MODELS[args.model]()
    args.coeff_dir = args.coeff_dir or str(bundled_adasde(args.model).directory)
    rows = run_rows(model, args)
    print(markdown(model, rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
