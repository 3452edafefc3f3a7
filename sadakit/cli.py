"""Command line: ``sadakit info | doctor | generate | bench | tune | adasde | demo`` (``python -m sadakit ...`` works too)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

from .cli_args import (
    check_output_kind,
    existing_file,
    image_side,
    non_negative_int,
    output_directory,
    output_file,
    positive_int,
)


def _cmd_info(args: argparse.Namespace) -> int:
    import sadakit
    from sadakit.registry import plugin_manager

    pm = plugin_manager()
    print(f"sadakit {sadakit.__version__}")
    print("plugins: " + ", ".join(sorted(pm.get_name(p) for p in pm.get_plugins())))
    print("supported pipelines:")
    for name in sadakit.supported_pipelines():
        print(f"  {name}")
    return 0


def _cmd_doctor(args: argparse.Namespace) -> int:
    """Versions, and whether torchaudio's compiled library loads against this torch (exit 1 if not)."""
    from sadakit.doctor import check_torch_pair, versions_report

    check = check_torch_pair()
    if not args.quiet:
        for name, version in versions_report().items():
            print(f"{name:>12}: {version}")
    if not check.ok:
        print(f"sadakit doctor: {check.problem}", file=sys.stderr)
        return 1
    pair = (f"torch {check.torch_version} + torchaudio {check.torchaudio_version} load together"
            if check.torchaudio_version else f"torch {check.torch_version}; torchaudio not installed "
            "(audio metrics need it: pip install 'sadakit[audio]')")
    print(f"sadakit doctor: ok, {pair}")
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    import torch

    import sadakit
    from sadakit.loading import control_image_kwargs, default_call_kwargs, load_pipeline
    from sadakit.registry import output_format_of

    _check_outputs(args)
    if args.adasde_file and args.accelerate:
        raise SystemExit("sadakit generate: --adasde-file and --accelerate exclude each other: AdaSDE samples in "
                         "a few steps, SADA skips calls of long runs; pass one of them")
    args.device = _device_of_this_process(args.device)
    preset = None
    if args.preset:
        if args.adasde_file or args.accelerate is False:
            raise SystemExit("sadakit generate: --preset is a tuned SADA configuration; it excludes --adasde-file "
                             "and --no-accelerate")
        preset = sadakit.Preset.load(args.preset)
    pipe = load_pipeline(args.pipeline, dtype=args.dtype, device=args.device)
    name = type(pipe).__name__
    fmt = output_format_of(pipe)
    kind = fmt.kind
    is_audio = kind == "audio"
    if not args.prompts:
        check_output_kind(args.out, fmt, name)
    call_kwargs = default_call_kwargs(args.pipeline)  # sizes of the offline pipelines, bundled guidance
    if args.control_image:
        call_kwargs.update(control_image_kwargs(pipe, args.control_image))
    elif "controlnet" in getattr(pipe, "components", {}) and not {"image", "control_image"} & set(call_kwargs):
        raise SystemExit(f"sadakit generate: {name} is a ControlNet pipeline; pass its condition image with --control-image")
    if args.guidance is not None:
        call_kwargs["guidance_scale"] = args.guidance
    if args.height:
        call_kwargs["height"] = args.height
    if args.width:
        call_kwargs["width"] = args.width
    if args.num_frames:
        if kind != "video":
            raise SystemExit(f"sadakit generate: --num-frames is for video pipelines; {name} makes {kind}")
        call_kwargs["num_frames"] = args.num_frames
    steps = args.steps or (preset.steps if preset is not None else 30)
    use_sada = args.accelerate is not False and not args.adasde_file
    if args.adasde_file:
        from sadakit.adasde import scheduler_for_pipeline

        pipe.scheduler = scheduler_for_pipeline(pipe, args.adasde_file, allow_other_model=args.allow_other_model)
        steps = args.steps or pipe.scheduler.meta.nfe
        if pipe.scheduler.meta.guidance_scale is not None:
            call_kwargs.setdefault("guidance_scale", pipe.scheduler.meta.guidance_scale)
    if use_sada:
        sadakit.accelerate(pipe, preset.config_for(pipe, steps) if preset is not None else None)
    if args.compile:
        _compile_networks(pipe)
    if args.prompts:
        return _generate_prompt_set(pipe, args, steps, call_kwargs, use_sada)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if is_audio:
        from sadakit.audio_io import generate_audio

        summary = generate_audio(
            pipe, args.prompt, steps, args.seed, accelerate=False, out_path=str(out),
            audio_length_in_s=call_kwargs.get("audio_length_in_s"), guidance_scale=call_kwargs.get("guidance_scale"),
        )
    else:  # images, videos, and the kinds plugins add: the format says where the samples are and how to write one
        generator = torch.Generator(device=args.device or "cpu").manual_seed(args.seed)
        if fmt.output_type is not None:
            call_kwargs.setdefault("output_type", fmt.output_type)
        samples = getattr(pipe(prompt=args.prompt, num_inference_steps=steps, generator=generator, **call_kwargs),
                          fmt.output_field)
        _refuse_non_finite(samples, name)
        written, note = fmt.write(pipe, samples[0], out, {"fps": args.fps})
        summary = {"output": str(written)}
        if kind == "video":
            summary["frames"] = len(samples[0])
        if note:
            summary["note"] = note
    summary["sampler"] = (f"AdaSDE {pipe.scheduler.meta.solver}, {pipe.scheduler.nfe} calls" if args.adasde_file
                          else f"{type(pipe.scheduler).__name__}, {steps} steps" + (" + SADA" if use_sada else ""))
    if use_sada:
        summary["report"] = sadakit.report(pipe).to_dict()
        print(sadakit.report(pipe))
    print(json.dumps({k: v for k, v in summary.items() if k != "report"}, default=str))
    return 0


def _device_of_this_process(device: str | None) -> str | None:
    """Under torchrun / accelerate launch, ``--device cuda`` means this process's own GPU."""
    local_rank = os.environ.get("LOCAL_RANK")
    if device == "cuda" and local_rank is not None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return f"cuda:{int(local_rank)}"
    return device


def _check_outputs(args: argparse.Namespace) -> None:
    """--out is a file for --prompt and a directory for --prompts; the prompt set reads cleanly
    (both before the pipeline loads; reported as argparse reports a bad argument, exit 2)."""
    try:
        if args.prompts:
            output_directory(args.out)
        else:
            output_file(args.out)
    except argparse.ArgumentTypeError as error:
        _argument_error("--out", str(error))
    if args.batch_size > 1 and not args.prompts:
        _argument_error("--batch-size", "groups the rows of --prompts; with --prompt there is one row")
    if args.prompts:
        from sadakit.prompt_sets import PromptSetError, read_rows

        try:
            args.rows = read_rows(args.prompts, base_seed=args.seed)
        except PromptSetError as error:
            _argument_error("--prompts", str(error))


def _argument_error(flag: str, message: str) -> None:
    print(f"sadakit generate: error: argument {flag}: {message}", file=sys.stderr)
    raise SystemExit(2)


def _generate_prompt_set(pipe, args: argparse.Namespace, steps: int, call_kwargs: dict, use_sada: bool) -> int:
    from sadakit.prompt_runs import generate_many

    sampler = (f"AdaSDE {pipe.scheduler.meta.solver}, {pipe.scheduler.nfe} calls" if args.adasde_file else None)
    summary = generate_many(pipe, args.rows, args.out, steps=steps, call_kwargs=call_kwargs,
                            batch_size=args.batch_size, fps=args.fps, sampler=sampler)
    print(json.dumps({"rows": summary.rows, "done_before": summary.done_before, "generated": summary.generated,
                      "failed": summary.failed, "rows_per_second": round(summary.rows_per_second, 3),
                      "manifest": str(summary.manifest) if summary.manifest else None}))
    if summary.failed:
        print(f"sadakit generate: {summary.failed} row(s) failed on this process; their errors are in "
              f"{Path(args.out) / 'manifest.jsonl'}", file=sys.stderr)
    return 0


def _refuse_non_finite(values, pipeline_name: str) -> None:
    """A NaN output would be written as a black image with exit status 0: refuse it instead."""
    import numpy as np

    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):  # a plugin's own kind of sample (not an array): its writer judges it
        return
    if not np.isfinite(array).all():
        raise SystemExit(f"sadakit generate: {pipeline_name} produced non-finite values (NaN or inf); nothing was "
                         "written. With --adasde-file, check the file (sadakit adasde inspect); otherwise try "
                         "--dtype float32")


def _compile_networks(pipe) -> None:
    """``torch.compile`` the denoiser and any control branch in place (SADA's decisions stay eager)."""
    from sadakit.registry import find_plugin

    plugin = find_plugin(pipe)
    for module in [plugin.denoiser(pipe).module] + [c.module for c in plugin.control_modules(pipe)]:
        module.compile()


def _cmd_tune(args: argparse.Namespace) -> int:
    """The cheapest SADA budget that holds ``--target`` on the calibration prompts, as a preset."""
    import torch

    import sadakit
    from sadakit.loading import GENERIC_PROMPTS, default_call_kwargs, default_prompts, load_pipeline
    from sadakit.registry import output_kind_of

    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.pipeline, dtype=args.dtype, device=args.device)
    prompts = args.prompts or default_prompts(args.pipeline) or list(GENERIC_PROMPTS)
    call_kwargs = default_call_kwargs(args.pipeline)
    if args.images_per_prompt > 1:
        key = "num_waveforms_per_prompt" if output_kind_of(pipe) == "audio" else "num_images_per_prompt"
        call_kwargs[key] = args.images_per_prompt
    shapes = ({},) if args.budget_only else sadakit.tuning.PLAN_SHAPES
    preset = sadakit.tune(pipe, prompts, args.target, steps=args.steps, seeds=args.seeds, coverage=args.coverage,
                          call_kwargs=call_kwargs, plan_shapes=shapes)
    path = preset.save(args.out)
    config = preset.config
    print(json.dumps({"preset": str(path), "budget": config.budget, "final_calls": config.final_calls,
                      "budget_order": config.budget_order, "held": preset.held,
                      "target_db": preset.target_db, "steps": preset.steps}))
    return 0


#: Commands that evaluate rather than generate (``bench``, ``demo``), named like the built-in
#: plugins: by module, each with ``add_command(subparsers)``. Why by name: the product never
#: imports evaluation code, so these modules can change (or be left out) without touching it.
EVALUATION_COMMANDS = ("sadakit.bench.command", "sadakit.demo_command")


def _add_evaluation_command(sub: argparse._SubParsersAction, module_name: str) -> None:
    import importlib

    importlib.import_module(module_name).add_command(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sadakit", description="Training-free diffusion acceleration.")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="list plugins and supported pipelines")
    info.set_defaults(func=_cmd_info)

    doctor = sub.add_parser("doctor", help="print versions; check that torch and torchaudio load together")
    doctor.add_argument("--quiet", action="store_true", help="print only the verdict")
    doctor.set_defaults(func=_cmd_doctor)

    gen = sub.add_parser("generate", help="generate an image or audio clip, optionally accelerated")
    gen.add_argument("--pipeline", required=True,
                     help="hub id, local directory, bundled:shapes, bundled:shapes-dit, bundled:moving-shapes, bundled:notes, or tiny:<family>[:medium] (e.g. tiny:sdxl, tiny:wan)")
    prompts = gen.add_mutually_exclusive_group(required=True)
    prompts.add_argument("--prompt", help="one prompt: --out is a file")
    prompts.add_argument("--prompts", type=existing_file, default=None,
                         help="a prompt set: a text file (one prompt per line) or JSONL (prompt, seed, negative_prompt, "
                              "options); --out is a directory (one file per row + manifest.jsonl); rerunning skips "
                              "finished rows; under torchrun the rows are sharded across ranks")
    gen.add_argument("--batch-size", type=positive_int, default=1,
                     help="with --prompts: rows per pipeline call (rows keep their own seeds)")
    gen.add_argument("--steps", type=positive_int, default=None, help="default: 30, or the AdaSDE file's NFE")
    gen.add_argument("--seed", type=non_negative_int, default=0)
    gen.add_argument("--height", type=image_side, default=None)
    gen.add_argument("--width", type=image_side, default=None)
    gen.add_argument("--num-frames", type=positive_int, default=None, help="video pipelines: frames to generate")
    gen.add_argument("--fps", type=positive_int, default=8, help="video pipelines: frames per second of the file")
    gen.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    gen.add_argument("--device", default=None, help="e.g. cuda; default: where the pipeline loads")
    gen.add_argument("--guidance", type=float, default=None,
                     help="guidance scale (default: the pipeline's, the bundled model's, or the AdaSDE file's)")
    gen.add_argument("--control-image", type=existing_file, default=None,
                     help="condition image file for ControlNet pipelines")
    gen.add_argument("--adasde-file", type=existing_file, default=None,
                     help="sample with AdaSDE from this coefficient file (steps default to its NFE; no SADA)")
    gen.add_argument("--allow-other-model", action="store_true",
                     help="use an AdaSDE file distilled for another model (refused by default)")
    gen.add_argument("--compile", action="store_true", help="torch.compile the denoiser (and ControlNet) in place")
    gen.add_argument("--preset", type=existing_file, default=None,
                     help="SADA preset from `sadakit tune` (steps default to the preset's; refused for another pipeline)")
    group = gen.add_mutually_exclusive_group()
    group.add_argument("--accelerate", dest="accelerate", action="store_true", default=None,
                       help="SADA (the default unless --adasde-file is given)")
    group.add_argument("--no-accelerate", dest="accelerate", action="store_false")
    gen.add_argument("--out", required=True,
                     help="output file: .png/.jpg/.webp for images, .mp4/.gif for video, .wav for audio; "
                          "with --prompts, a directory")
    gen.set_defaults(func=_cmd_generate)

    tune = sub.add_parser("tune", help="the fastest SADA budget that holds a PSNR target; writes a preset")
    tune.add_argument("--pipeline", required=True,
                      help="hub id, local directory, bundled:shapes, bundled:shapes-dit, bundled:moving-shapes, bundled:notes, or tiny:<family>[:medium]")
    tune.add_argument("--target", required=True, type=float, help="PSNR in dB against the full-step output")
    tune.add_argument("--coverage", type=float, default=0.9, help="share of calibration outputs that must hold it")
    tune.add_argument("--prompts", nargs="+", default=None, help="calibration prompts (default: as for bench)")
    tune.add_argument("--seeds", nargs="+", type=non_negative_int, default=[0])
    tune.add_argument("--steps", type=positive_int, default=50)
    tune.add_argument("--images-per-prompt", type=positive_int, default=4)
    tune.add_argument("--threads", type=positive_int, default=None)
    tune.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    tune.add_argument("--device", default=None)
    tune.add_argument("--budget-only", action="store_true",
                      help="search the budget with the default plan only (default: also the plan shapes of "
                           "sadakit.tuning.PLAN_SHAPES, up to 4 runs per budget)")
    tune.add_argument("--out", required=True, help="preset file to write (JSON)")
    tune.set_defaults(func=_cmd_tune)

    adasde = sub.add_parser("adasde", help="AdaSDE coefficients: distill / inspect")
    from sadakit.adasde.cli import build_parser as build_adasde_parser

    build_adasde_parser(adasde)

    for module_name in EVALUATION_COMMANDS:
        _add_evaluation_command(sub, module_name)
    return parser


#: Commands that load third-party pipelines: run inside :func:`sadakit.quiet.quiet`, so their
#: known deprecation notices and loading bars do not bury sadakit's own output.
QUIET_COMMANDS = frozenset({"demo", "generate", "bench", "info", "tune"})


def main(argv: list[str] | None = None) -> int:
    """Run a command; an error prints one line (``--debug``: the traceback) and returns 1."""
    args = build_parser().parse_args(argv)
    from sadakit.quiet import quiet

    command = getattr(args, "command", None)
    try:
        with quiet() if command in QUIET_COMMANDS else contextlib.nullcontext():
            status = args.func(args)
    except Exception as error:  # SystemExit and KeyboardInterrupt pass through
        if getattr(args, "debug", False):
            raise
        message = " ".join(str(error).split()) or "(no message)"
        print(f"sadakit {command}: error: {type(error).__name__}: {message} (--debug shows the traceback)",
              file=sys.stderr)
        return 1
    _close_process_group()  # on success only: after a failure a barrier would wait for ever
    return status


def _close_process_group() -> None:
    """Shut torchrun's process group down before the interpreter exits.

    A rank that exits with its gloo group alive can abort in C++ during finalisation
    ("terminate called without an active exception", SIGABRT), and torchrun then reports the
    whole run as failed although every output was written. The barrier lets the main process
    finish writing before any rank tears down.
    """
    if "torch.distributed" not in sys.modules:  # nothing started one
        return
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
