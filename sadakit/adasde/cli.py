"""Command line for AdaSDE: distil coefficients, inspect a coefficient file.

    python -m sadakit.adasde distill --testbed gmm2d-8 --nfe 5 --out coeffs.safetensors
    python -m sadakit.adasde distill --pipeline stabilityai/stable-diffusion-xl-base-1.0 \
        --prompt "a photo of a cat" --prompt "a watercolour city" --guidance 5 --nfe 5 --out sdxl.safetensors
    python -m sadakit.adasde distill --factory mypkg.adapters:sdxl_ve --nfe 5 --out sdxl.safetensors
    python -m sadakit.adasde inspect coeffs.safetensors
    torchrun --nproc_per_node 2 -m sadakit.adasde distill ...     # data parallel

``--pipeline`` takes a hub id, a local directory or an offline name (``tiny:sdxl``,
``bundled:shapes``, ``bundled:notes``, see ``sadakit.loading``) and distils under the pipeline's
own prompts and guidance (``sadakit.adasde.pipeline_denoiser``). For the bundled models the
prompts default to their evaluation set, the guidance to theirs and the model name to the one
their shipped coefficient files carry. ``--factory module:function`` names a callable
returning ``(denoiser, sample_noise, meta)`` with ``meta`` a dict of ``model``,
``prediction_type``, ``guidance_scale``, ``sigma_min``, ``sigma_max`` and optionally
``model_fingerprint`` (a ``PipelineDenoiser`` provides all three; without a fingerprint in
``meta`` it is computed from the denoiser when it has a config). Every distilled file records
the model's identity (``model`` and ``model_fingerprint``), and ``inspect`` shows it; a
malformed file is refused with one line naming it. ``main`` is what the project CLI mounts as
its ``adasde`` command.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
from typing import Any, Callable

import attrs
import torch

from .coefficients import CoefficientMismatchError, load_coefficients
from .distill import DistillConfig, distill, latent_l2, per_sample_log_mse
from .identity import model_fingerprint, short_fingerprint


def _testbed_factory(name: str) -> tuple[Callable, Callable, dict[str, Any]]:
    from sadakit.testbeds.configs import get_testbed
    from sadakit.testbeds.pipeline import GMMEpsModel, sd_alphas_cumprod

    tb = get_testbed(name)
    ab = sd_alphas_cumprod()
    s = ((1 - ab) / ab).sqrt()
    # the coefficients are for the eps model on SD's schedule, as GMMPipeline(GMMEpsModel(name), ...) runs it
    meta = {"model": f"testbed:{name}", "prediction_type": "epsilon", "sigma_min": float(s[0]), "sigma_max": float(s[-1]),
            "model_fingerprint": model_fingerprint(GMMEpsModel(tb))}
    return (
        lambda x, sigma: tb.denoiser.denoise(x, sigma),
        lambda batch, g: torch.randn((batch, *tb.data_shape), generator=g),
        meta,
    )


def _pipeline_factory(args: argparse.Namespace) -> tuple[Callable, Callable, dict[str, Any]]:
    from sadakit.loading import default_call_kwargs, default_model_name, default_prompts, load_pipeline

    from .pipeline_denoiser import pipeline_denoiser

    prompts = args.prompt or default_prompts(args.pipeline, None)
    if not prompts:
        raise SystemExit("--pipeline needs at least one --prompt (the conditioning the coefficients are fitted under)")
    pipe = load_pipeline(args.pipeline, dtype=args.dtype, device=args.device)
    call_kwargs = default_call_kwargs(args.pipeline)
    default_guidance = call_kwargs.pop("guidance_scale", None)  # passed once, as guidance_scale=
    guidance = default_guidance if args.guidance is None else args.guidance
    adapter = pipeline_denoiser(
        pipe, prompts, guidance_scale=guidance, model=args.model or default_model_name(args.pipeline), **call_kwargs,
    )
    for p in adapter.module.parameters():  # only the coefficients learn
        p.requires_grad_(False)
    return adapter, adapter.sample_noise, adapter.meta


def _load_factory(spec: str) -> Callable[[], tuple[Callable, Callable, dict[str, Any]]]:
    module, _, func = spec.partition(":")
    if not module or not func:
        raise SystemExit(f"--factory must look like 'package.module:function', got {spec!r}")
    return getattr(importlib.import_module(module), func)


def _bundled_sigma_max(args: argparse.Namespace) -> float | None:
    """A bundled model's measured best grid top (``BundledAdaSDE.sigma_max``), for --pipeline bundled:*."""
    if not (args.pipeline or "").startswith("bundled:"):
        return None
    from sadakit.bundled.adasde_files import BUNDLED_ADASDE

    spec = BUNDLED_ADASDE.get(args.pipeline.split(":", 1)[1])
    return spec.sigma_max if spec is not None else None


def _pipeline_reference_sigmas(pipe: Any, steps: int) -> torch.Tensor:
    """The VE grid of the pipeline's own ``steps``-step Euler run (its scheduler's spacing), ending at 0."""
    from diffusers import EulerDiscreteScheduler

    sched = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    sched.set_timesteps(steps)
    return sched.sigmas.to(torch.float64)


def _vae_decode(pipe: Any, height: int | None = None, width: int | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Latents to the VAE's output (images, mel spectrograms): the space a benchmark compares samples in.

    Flux-style pipelines pack 2x2 latent patches into tokens (``_unpack_latents``) and shift the
    latents (``shift_factor``); their decode undoes both, at ``height`` x ``width`` pixels
    (default: a square image of that many tokens).
    """
    vae = pipe.vae
    scale = float(vae.config.scaling_factor)
    shift = float(getattr(vae.config, "shift_factor", None) or 0.0)
    unpack = getattr(pipe, "_unpack_latents", None)

    def decode(latents: torch.Tensor) -> torch.Tensor:
        if unpack is not None and latents.ndim == 3:
            side = math.isqrt(latents.shape[1]) * 2 * pipe.vae_scale_factor
            latents = unpack(latents, height or side, width or side, pipe.vae_scale_factor)
        return vae.decode((latents / scale + shift).to(vae.dtype)).sample.to(torch.float32)

    return decode


def _cmd_distill(args: argparse.Namespace) -> int:
    grid = _parse_sigmas(args.sigmas) if args.sigmas else None  # bad input fails before a model loads
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.testbed:
        denoiser, sample_noise, meta = _testbed_factory(args.testbed)
        torch.set_flush_denormal(True)
    elif args.pipeline:
        denoiser, sample_noise, meta = _pipeline_factory(args)
    else:
        denoiser, sample_noise, meta = _load_factory(args.factory)()
    if args.solver == "multistep" and not args.no_afs:
        raise SystemExit("--solver multistep has no analytic first step (NFE = steps already): add --no-afs")
    if meta.get("prediction_type") == "flow" and not args.no_afs:
        raise SystemExit(f"{meta['model']} is a flow-matching model: distil with --no-afs (no analytic first step)")
    cfg = DistillConfig(
        nfe=args.nfe, solver=args.solver, analytic_first_step=not args.no_afs, gamma_max=args.gamma_max,
        sigma_min=args.sigma_min if args.sigma_min is not None else meta.get("sigma_min", 0.002),
        sigma_max=args.sigma_max if args.sigma_max is not None else _bundled_sigma_max(args) or meta.get("sigma_max", 80.0),
        schedule=args.schedule,
        teacher_factor=args.teacher_factor, iterations=args.iterations, batch_size=args.batch, lr=args.lr,
        checkpoint_every=args.checkpoint_every, seed=args.seed, learn_grid=args.learn_grid or args.learn_ends,
        grid_lr=args.grid_lr, learn_ends=args.learn_ends, teacher_pool=args.teacher_pool, grid_fd_step=args.grid_fd_step,
        keep_best=args.keep_best, multistep_start=args.multistep_start,
        step_weight=args.step_weight if args.step_weight is not None else
        (0.0 if (args.learn_grid or args.learn_ends) else 1.0),
    )
    # learned ends: the teacher starts at the model's own top (uncapped), where a reference run starts
    sigma_range = meta.get("model_sigma_range") or (meta.get("sigma_min", 0.002), meta.get("sigma_max", 80.0))
    teacher_sigmas = None
    if args.teacher == "pipeline" or args.loss == "decoded-log":
        if not args.pipeline:
            raise SystemExit("--teacher pipeline and --loss decoded-log need --pipeline (its scheduler and VAE)")
        pipe = denoiser.pipe
    if args.teacher == "pipeline":
        teacher_sigmas = _pipeline_reference_sigmas(pipe, args.teacher_steps)
    feature_loss = {"latent": latent_l2, "log": per_sample_log_mse(),
                    "decoded-log": per_sample_log_mse(_vae_decode(pipe, *_image_size(args)))
                    if args.loss == "decoded-log" else None}[args.loss]
    res = distill(
        denoiser, sample_noise, cfg, sigmas=grid, model=meta["model"], model_fingerprint=meta.get("model_fingerprint"),
        prediction_type=meta.get("prediction_type", "epsilon"), guidance_scale=meta.get("guidance_scale"),
        output=args.out, log_path=args.log, resume=not args.fresh,
        model_sigma_range=tuple(sigma_range) if args.learn_ends else None,
        teacher_sigmas=teacher_sigmas, feature_loss=feature_loss,
    )
    print(
        f"distilled {meta['model']} ({short_fingerprint(res.coefficients.meta.model_fingerprint)}) NFE={cfg.nfe} "
        f"({cfg.solver}): loss {res.initial_loss:.4g} -> "
        f"{res.losses[-1] if res.losses else float('nan'):.4g} in {res.seconds:.1f} s -> {args.out}"
    )
    return 0


def _image_size(args: argparse.Namespace) -> tuple[int | None, int | None]:
    """``(height, width)`` the pipeline is called at (a bundled model's call arguments), if it says."""
    from sadakit.loading import default_call_kwargs

    kwargs = default_call_kwargs(args.pipeline)
    return kwargs.get("height"), kwargs.get("width")


def _parse_sigmas(text: str) -> torch.Tensor:
    """``--sigmas 99,6.9,2.4,0.96,0.22,0.002``: a decreasing positive grid (float64), or SystemExit naming what is wrong."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise SystemExit(f"--sigmas {text!r}: not a comma-separated list of numbers") from None
    if len(values) < 2 or not all(v > 0 and v == v and v != float("inf") for v in values) or any(
            b >= a for a, b in zip(values, values[1:])):
        raise SystemExit(f"--sigmas {text!r}: needs at least 2 finite positive sigmas, strictly decreasing")
    return torch.tensor(values, dtype=torch.float64)


def _cmd_inspect(args: argparse.Namespace) -> int:
    from ..core.adasde import multistep_effective_weights, squash

    try:
        cf = load_coefficients(args.path)
    except CoefficientMismatchError as exc:  # a malformed or foreign file: one line naming it
        raise SystemExit(f"sadakit adasde inspect: {exc}") from None
    fingerprint = cf.meta.model_fingerprint
    print(f"model: {cf.meta.model}")
    print("model fingerprint: " + (fingerprint if fingerprint else
                                   "none recorded (an older file: loading cannot check its model)"))
    print(json.dumps(attrs.asdict(cf.meta), indent=1))
    print("sigmas:", [round(float(s), 5) for s in cf.sigmas])
    if cf.meta.solver == "multistep":  # the weights as they act on the file's grid (2M's plus the learned offsets)
        for n, (c, (w1, w2, kappa)) in enumerate(zip(squash(cf.raw, cf.meta.gamma_max),
                                                      multistep_effective_weights(cf.sigmas, cf.raw))):
            print(f"step {n}: gamma={float(c.gamma):.4f} w(D_n-D_n-1)={w1:.4f} w(D_n-D_n-2)={w2:.4f} kappa={kappa:.4f}")
        return 0
    for n, c in enumerate(squash(cf.raw, cf.meta.gamma_max)):
        print(f"step {n}: gamma={float(c.gamma):.4f} r={float(c.r):.4f} a={float(c.a):.4f} c={float(c.c):.4f}")
    return 0


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="sadakit-adasde", description="AdaSDE coefficients")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("distill", help="distil coefficients against a many-step teacher")
    src = d.add_mutually_exclusive_group(required=True)
    src.add_argument("--testbed", help="a sadakit.testbeds configuration name, e.g. gmm2d-8")
    src.add_argument("--factory", help="module:function returning (denoiser, sample_noise, meta)")
    src.add_argument("--pipeline", help="hub id, local directory or offline name (tiny:sdxl, bundled:shapes, bundled:shapes-dit, bundled:notes)")
    d.add_argument("--prompt", action="append", default=[],
                   help="--pipeline: a prompt (repeat for several; default for bundled:*: its evaluation prompts)")
    d.add_argument("--guidance", type=float, default=None,
                   help="--pipeline: guidance scale (default: the bundled model's, else the pipeline's)")
    d.add_argument("--model", default=None,
                   help="--pipeline: model name stored in the file (default: a bundled model's id, else --pipeline)")
    d.add_argument("--dtype", default="float32", help="--pipeline: torch dtype of the weights")
    d.add_argument("--device", default=None, help="--pipeline: device, e.g. cuda")
    d.add_argument("--nfe", type=int, default=5)
    d.add_argument("--solver", default="adasde", choices=["adasde", "euler", "heun", "midpoint", "multistep"],
                   help="multistep: learned weights of the current and two previous denoised estimates (one call per step, "
                        "needs --no-afs; from DPM-Solver++ 2M, or Euler with --multistep-start euler)")
    d.add_argument("--multistep-start", default="dpm++2m", choices=["dpm++2m", "euler"],
                   help="--solver multistep: the solver its untrained weights reproduce")
    d.add_argument("--no-afs", action="store_true", help="no analytic first step (required for flow models)")
    d.add_argument("--gamma-max", type=float, default=0.3, help="0 = deterministic ablation")
    d.add_argument("--schedule", default="karras", choices=["karras", "loglinear", "time_uniform"])
    d.add_argument("--sigma-min", type=float, default=None, help="bottom of the grid (default: the model's range)")
    d.add_argument("--sigma-max", type=float, default=None,
                   help="top of the grid (default: the model's range, capped at 80; a bundled model's measured best)")
    d.add_argument("--sigmas", default=None, metavar="S0,S1,...",
                   help="the grid itself (steps + 1 decreasing sigmas, stored as schedule 'custom'; with --learn-grid "
                        "the starting grid), instead of --schedule / --sigma-max / --sigma-min")
    d.add_argument("--learn-grid", action="store_true",
                   help="learn the interior sigmas with the coefficients (the ends stay fixed; stored in the file)")
    d.add_argument("--learn-ends", action="store_true",
                   help="Euler or multistep form: learn the grid with its top and bottom, a last step to 0, and a teacher from the "
                        "model's own top sigma (--sigma-max/--sigma-min/--schedule give the starting grid)")
    d.add_argument("--teacher-pool", type=int, default=0,
                   help="--learn-ends: compute the teacher once for this many batches and cycle through them (0: fresh "
                        "noise and teacher every iteration)")
    d.add_argument("--grid-fd-step", type=float, default=0.0,
                   help="--learn-ends --gamma-max 0: the grid's gradient by central differences of this size in logit "
                        "units (0: autograd); for models whose output wiggles between integer timesteps")
    d.add_argument("--keep-best", action="store_true",
                   help="--learn-ends --teacher-pool 1: end on the grid of the lowest loss seen, not the last one")
    d.add_argument("--grid-lr", type=float, default=0.05, help="--learn-grid: Adam learning rate of the grid")
    d.add_argument("--step-weight", type=float, default=None,
                   help="weight of the per-step terms (default 1; 0 with --learn-grid: the last step only)")
    d.add_argument("--teacher-factor", type=int, default=8)
    d.add_argument("--teacher", default="midpoint", choices=["midpoint", "pipeline"],
                   help="--learn-ends: the mid-point reference from the model's top, or the pipeline's own "
                        "--teacher-steps Euler run (its scheduler's spacing): the 50-step output users compare with")
    d.add_argument("--teacher-steps", type=int, default=50, help="--teacher pipeline: steps of the reference run")
    d.add_argument("--loss", default="latent", choices=["latent", "log", "decoded-log"],
                   help="last-step loss: latent L2; the mean per-sample log-MSE (what a mean PSNR measures); the same "
                        "after the pipeline's VAE decoder")
    d.add_argument("--iterations", type=int, default=200)
    d.add_argument("--batch", type=int, default=256)
    d.add_argument("--lr", type=float, default=0.1)
    d.add_argument("--checkpoint-every", type=int, default=50)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--threads", type=int, default=None, help="torch threads (1 is fastest for the small testbeds)")
    d.add_argument("--out", required=True)
    d.add_argument("--log", default=None, help="loss log, JSON lines")
    d.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint")
    d.set_defaults(func=_cmd_distill)
    i = sub.add_parser("inspect", help="print a coefficient file's metadata and squashed coefficients")
    i.add_argument("path")
    i.set_defaults(func=_cmd_inspect)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
