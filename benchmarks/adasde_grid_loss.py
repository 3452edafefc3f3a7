"""Which loss should move a learned AdaSDE grid? The testbed's answer, in final-sample error.

For each solver form and NFE it distils (deterministic, ``gamma_max = 0``) on the analytic
testbed: the fixed Karras grid, and the learned grid with the per-step terms weighted 1 (the
grid learns from the last-step term only, the coefficients from all), or with the last step
only (``step_weight = 0``). Reported: the RMS distance of the final samples to a 64-step
mid-point solution from the same fresh noise (512 samples), and the grid each run ended on.

    python benchmarks/adasde_grid_loss.py --config gmm2d-8 --threads 1
"""

from __future__ import annotations

import argparse
import sys

import torch

from sadakit.adasde.distill import DistillConfig, distill
from sadakit.core.adasde import init_raw_coefficients, make_sigmas, sample_adasde, sample_midpoint, steps_for_nfe
from sadakit.testbeds.configs import get_testbed

SMIN, SMAX = 0.0292, 14.6  # SD's sigma range, as bench_adasde.py


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="gmm2d-8")
    p.add_argument("--forms", nargs="+", default=["euler:3", "euler:5", "adasde:3", "adasde:5"], help="solver:nfe")
    p.add_argument("--iterations", type=int, default=40)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    tb = get_testbed(args.config)

    def denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return tb.denoiser.denoise(x, sigma)

    def noise(batch: int, g: torch.Generator) -> torch.Tensor:
        return torch.randn((batch, *tb.data_shape), generator=g)

    x = SMAX * torch.randn((512, *tb.data_shape), generator=torch.Generator().manual_seed(5))
    ref = sample_midpoint(denoiser, x, make_sigmas(64, SMIN, SMAX, "karras"))

    def err(y: torch.Tensor) -> float:
        return float((y - ref).pow(2).mean().sqrt())

    print("| form | NFE | run | final RMS error | grid |")
    print("|---|---|---|---|---|")
    for form in args.forms:
        solver, nfe = form.split(":")[0], int(form.split(":")[1])
        steps = steps_for_nfe(nfe, solver)
        grid = make_sigmas(steps, SMIN, SMAX, "karras")
        untrained = sample_adasde(denoiser, x, grid, init_raw_coefficients(steps, 0.0, 0.0), solver=solver, gamma_max=0.0).x
        print(f"| {solver} | {nfe} | untrained, Karras | {err(untrained):.4f} | {[round(float(s), 3) for s in grid]} |")
        runs = [("learned grid, per-step terms 1 (grid: last step only)", True, 1.0),
                ("learned grid, last step only", True, 0.0)]
        if solver != "euler":  # Euler without churn has nothing to learn on a fixed grid
            runs.insert(0, ("fixed Karras grid, per-step loss", False, 1.0))
        for label, learn, weight in runs:
            cfg = DistillConfig(nfe=nfe, solver=solver, gamma_max=0.0, iterations=args.iterations, batch_size=args.batch,
                                teacher_factor=4, sigma_min=SMIN, sigma_max=SMAX, learn_grid=learn, step_weight=weight,
                                grid_lr=0.1)
            cf = distill(denoiser, noise, cfg, model=f"testbed:{args.config}", progress=False).coefficients
            out = sample_adasde(denoiser, x, cf.sigmas, cf.raw, solver=solver, gamma_max=0.0).x
            print(f"| {solver} | {nfe} | {label} | {err(out):.4f} | {[round(float(s), 3) for s in cf.sigmas]} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
