"""Learned-ends grids against both references, on fresh noise: the mid-point ODE solution and the 50-step Euler output.

Why: a grid can fit one reference and miss the other, and the benchmark's verdict (mean of the
per-sample PSNRs after decoding) is not the distillation's mean latent L2. For each grid this prints
the latent mean-square error and mean log10 MSE to the mid-point reference from the model's top
sigma, then, after the VAE, the mean per-sample and whole-set PSNR to the 50-step Euler output and
to the mid-point reference. One start noise per prompt (``--seed``), churn-free Euler, no analytic
first step (the learned-ends form).

    .venv/bin/python benchmarks/adasde_reference_check.py --model shapes --nfe 5 --seed 777 \
        tuned=30:0.3 learned=shapes-e5.safetensors
"""

from __future__ import annotations

import argparse
import sys

import torch
from diffusers import EulerDiscreteScheduler

from sadakit.adasde import load_coefficients
from sadakit.adasde.distill import DistillConfig, final_state, reference_grid, reference_teacher
from sadakit.adasde.pipeline_denoiser import pipeline_denoiser
from sadakit.core.adasde import init_raw_coefficients, make_sigmas
from sadakit.loading import default_call_kwargs, default_prompts, load_pipeline


def grid_of(spec: str, nfe: int) -> torch.Tensor:
    """``HI:LO`` (a log-linear grid of ``nfe`` calls, then 0) or a coefficient file's grid."""
    if spec.endswith(".safetensors"):
        return load_coefficients(spec).sigmas
    hi, lo = map(float, spec.split(":"))
    return torch.cat([make_sigmas(nfe - 1, lo, hi, "loglinear"), torch.zeros(1, dtype=torch.float64)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="shapes", choices=["shapes", "notes"])
    p.add_argument("--nfe", type=int, default=5)
    p.add_argument("--seed", type=int, default=777)
    p.add_argument("--teacher-steps", type=int, default=24, help="mid-point steps of the ODE reference")
    p.add_argument("grids", nargs="+", metavar="LABEL=HI:LO|FILE")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    grids = {label: grid_of(spec, args.nfe) for label, _, spec in (g.partition("=") for g in args.grids)}
    name = f"bundled:{args.model}"
    pipe = load_pipeline(name)
    kwargs = default_call_kwargs(name)
    guidance = kwargs.pop("guidance_scale", None)
    den = pipeline_denoiser(pipe, default_prompts(name, None), guidance_scale=guidance, **kwargs)
    lo, hi = den.chart.sigma_range
    z = den.sample_noise(den.prompts, torch.Generator().manual_seed(args.seed))
    cfg = DistillConfig(nfe=args.nfe, solver="euler", analytic_first_step=False, gamma_max=0.0)
    euler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    euler.set_timesteps(50)
    scale = float(pipe.vae.config.scaling_factor)

    def decode(latents: torch.Tensor) -> torch.Tensor:
        out = pipe.vae.decode(latents / scale).sample.float()
        return (out / 2 + 0.5).clamp(0, 1) if args.model == "shapes" else out  # images as the pipeline returns them

    with torch.no_grad():
        midpoint = reference_teacher(den, z, reference_grid(args.teacher_steps, lo, hi).float())
        euler50 = reference_teacher(den, z, euler.sigmas.float())
        print(f"mid-point reference vs 50-step Euler: latent RMS {float((midpoint - euler50).pow(2).mean().sqrt()):.4f}")
        refs = {"euler50": decode(euler50), "midpoint": decode(midpoint)}
        for label, s in grids.items():
            out = final_state(den, z * float(s[0]), s.float(), init_raw_coefficients(len(s) - 1, 0.0, 0.0), cfg,
                              torch.Generator())
            mse = (out - midpoint).pow(2).flatten(1).mean(1)
            line = (f"{label:>10} {[round(float(v), 3) for v in s]}: latent MSE {float(mse.mean()):.4f}, "
                    f"mean log10 MSE {float(mse.log10().mean()):.4f}, to euler50 {float((out - euler50).pow(2).mean()):.4f}")
            image = decode(out)
            for ref_name, ref in refs.items():
                m = (image - ref).pow(2).flatten(1).mean(1)
                line += (f"; decoded vs {ref_name}: per-sample PSNR {float((-10 * m.log10()).mean()):.2f}, "
                         f"set {float(-10 * m.mean().log10()):.2f}")
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
