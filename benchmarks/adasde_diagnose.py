"""Where a learned AdaSDE file loses against its teacher, step by step, on a bundled model.

For each coefficient file (or untrained grid) it rolls the student out through the pipeline's
own denoiser (``pipeline_denoiser``: its prompts, its CFG) from fixed start noise, next to the
distillation teacher (mid-point solver on the student grid refined ``--teacher-factor`` times),
and prints per step: the squashed coefficients, the state error and the x0 (denoised) error
against the teacher at that node. It also rolls out a much finer teacher on the same start
noise, so the teacher's own error is visible next to the student's.

    python benchmarks/adasde_diagnose.py --model shapes --nfe 5 --threads 1
"""

from __future__ import annotations

import argparse
import sys

import torch

from sadakit.adasde import load_coefficients, pipeline_denoiser
from sadakit.adasde.distill import teacher_trajectory
from sadakit.core.adasde import init_raw_coefficients, make_sigmas, sample_adasde, sample_midpoint, squash
from sadakit.bundled.adasde_files import bundled_adasde


def rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).pow(2).mean().sqrt())


def rollout_report(D, x0: torch.Tensor, label: str, raw: torch.Tensor, sigmas: torch.Tensor, solver: str,
                   gamma_max: float, factor: int, reference: torch.Tensor) -> dict:
    """Per-step coefficients and errors of one student against the teacher on its own grid."""
    steps = len(sigmas) - 1
    teacher = teacher_trajectory(D, x0, sigmas, factor)
    with torch.no_grad():
        res = sample_adasde(D, x0, sigmas, raw, generator=torch.Generator().manual_seed(1), solver=solver,
                            gamma_max=gamma_max)
    coeffs = squash(raw, gamma_max)
    print(f"\n## {label}: solver {solver}, grid {[round(float(s), 4) for s in sigmas]}", flush=True)
    print("| step | sigma -> | gamma | r | a | c | state RMS err vs teacher | x0 RMS err vs teacher |")
    print("|---|---|---|---|---|---|---|---|")
    for n in range(steps):
        s = torch.tensor(float(sigmas[n + 1]), dtype=torch.float32)
        xs, xt = res.trajectory[n], teacher[n]
        with torch.no_grad():
            e0 = rms(D(xs, s), D(xt, s)) if n < steps - 1 else rms(xs, xt)
        c = coeffs[n]
        print(f"| {n} | {float(sigmas[n + 1]):.4g} | {float(c.gamma):.3g} | {float(c.r):.3f} | {float(c.a):.3f} | "
              f"{float(c.c):.3f} | {rms(xs, xt):.4f} | {e0:.4f} |", flush=True)
    final = res.x
    out = {"label": label, "student_vs_teacher": rms(final, teacher[-1]), "student_vs_fine": rms(final, reference),
           "teacher_vs_fine": rms(teacher[-1], reference)}
    print(f"final latent RMS: student vs its teacher {out['student_vs_teacher']:.4f}, student vs fine reference "
          f"{out['student_vs_fine']:.4f}, teacher vs fine reference {out['teacher_vs_fine']:.4f}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="shapes", choices=["shapes", "notes"])
    p.add_argument("--nfe", type=int, default=5)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--teacher-factor", type=int, default=4)
    p.add_argument("--fine-steps", type=int, default=64, help="steps of the fine mid-point reference")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    spec = bundled_adasde(args.model)
    if args.model == "shapes":
        from sadakit.bundled import data_shapes, shapes

        pipe, prompts, kwargs = shapes.load_pipeline(), [lab.prompt for lab in data_shapes.all_labels()], {}
    else:
        from sadakit.bundled import notes

        pipe, prompts, kwargs = notes.load_pipeline(), notes.eval_prompts(), {"audio_length_in_s": notes.AUDIO_SECONDS}
    pipe.set_progress_bar_config(disable=True)
    D = pipeline_denoiser(pipe, prompts[: args.samples], guidance_scale=spec.guidance_scale, **kwargs)
    x0 = D.sample_noise(args.samples, torch.Generator().manual_seed(123)).to(torch.float32)
    results = []
    files = [(solver, spec.path(args.nfe, solver)) for solver in ("adasde", "euler")]
    for solver, path in files:
        if not path.is_file():
            continue
        cf = load_coefficients(path)
        smax = float(cf.sigmas[0])
        start = x0 * smax
        fine = make_sigmas(args.fine_steps, float(cf.sigmas[-1]), smax, "karras")
        reference = sample_midpoint(D, start, fine)
        results.append(rollout_report(D, start, f"shipped {path.name}", cf.raw, cf.sigmas, solver, cf.meta.gamma_max,
                                      args.teacher_factor, reference))
        steps = cf.meta.steps
        untrained = init_raw_coefficients(steps, 0.0, 0.0)
        results.append(rollout_report(D, start, f"untrained {solver} on the same grid", untrained, cf.sigmas, solver,
                                      0.0, args.teacher_factor, reference))
    # the grid alone: untrained Euler on a log-linear grid with a higher bottom (the sweep's best)
    euler_steps = args.nfe + 1  # Euler with the analytic first step: NFE = steps - 1
    for lo in (0.029, 0.3):
        grid = make_sigmas(euler_steps, lo, spec.sigma_max or 80.0, "loglinear")
        start = x0 * float(grid[0])
        reference = sample_midpoint(D, start, make_sigmas(args.fine_steps, lo, float(grid[0]), "karras"))
        results.append(rollout_report(D, start, f"untrained euler, log-linear {lo}-{float(grid[0]):g}",
                                      init_raw_coefficients(len(grid) - 1, 0.0, 0.0), grid, "euler", 0.0,
                                      args.teacher_factor, reference))
    print("\n| run | final RMS vs its teacher | vs fine reference | its teacher vs fine reference |")
    print("|---|---|---|---|")
    for r in results:
        print(f"| {r['label']} | {r['student_vs_teacher']:.4f} | {r['student_vs_fine']:.4f} | {r['teacher_vs_fine']:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
