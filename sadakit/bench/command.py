"""``sadakit bench``: its options and handler (evaluation code; the CLI knows it only by name).

Every option works for every kind of output or is refused before anything runs, naming the
pipeline and what is allowed: ``--images-per-prompt`` is waveforms per prompt for audio
(``num_waveforms_per_prompt``) and videos per prompt for video (``num_videos_per_prompt``);
``--height``/``--width`` are refused for audio; ``--control-image`` for pipelines without a ControlNet.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..cli_args import existing_file, image_side, non_negative_int, output_directory, positive_int



def add_command(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="baseline vs every applicable accelerator, side by side")
    bench.add_argument("--pipeline", required=True,
                       help="hub id, local directory, bundled:shapes, bundled:shapes-dit, bundled:moving-shapes, bundled:notes, or tiny:<family>[:medium] (e.g. tiny:sdxl, tiny:wan)")
    bench.add_argument("--prompts", nargs="+", default=None,
                       help="default: 4 of the bundled model's evaluation prompts for bundled:*, else two short prompts")
    bench.add_argument("--seeds", nargs="+", type=non_negative_int, default=[0])
    bench.add_argument("--steps", type=positive_int, default=20)
    bench.add_argument("--repeats", type=positive_int, default=3)
    bench.add_argument("--images-per-prompt", type=positive_int, default=1,
                       help="batch per generation: images, waveforms (audio) or videos per prompt "
                            "(small models are overhead-bound at batch 1)")
    bench.add_argument("--methods", nargs="+", default=None,
                       help="method[:knob] list, or a knob sweep method:k1,k2,k3 (e.g. fbcache:0.2,0.4,0.6); "
                            "default: every method (inapplicable ones are listed with the reason)")
    bench.add_argument("--sweep", action="store_true",
                       help="methods given without a knob run their default knob sweep (sadakit.bench.SWEEPS); "
                            "without --methods, every method does")
    bench.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    bench.add_argument("--adasde-file", type=existing_file, default=None,
                       help="AdaSDE coefficient file for the 'adasde' method")
    bench.add_argument("--control-image", type=existing_file, default=None,
                       help="condition image file for ControlNet pipelines (tiny ControlNets use a built-in one)")
    bench.add_argument("--height", type=image_side, default=None, help="image and video pipelines")
    bench.add_argument("--width", type=image_side, default=None, help="image and video pipelines")
    bench.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    bench.add_argument("--device", default=None)
    bench.add_argument("--out", type=output_directory, default="bench-output")
    bench.set_defaults(func=run_command)


def call_kwargs_for(pipe, args: argparse.Namespace) -> dict:
    """The pipeline call arguments the options ask for; an option the pipeline cannot take is
    refused here, in one line, before any generation."""
    from ..loading import control_image_kwargs, default_call_kwargs
    from ..registry import output_kind_of
    from .runner import per_prompt_kwargs

    name, kind = type(pipe).__name__, output_kind_of(pipe)
    call_kwargs = default_call_kwargs(args.pipeline)
    try:
        call_kwargs.update(per_prompt_kwargs(pipe, args.images_per_prompt))
        if args.control_image:
            call_kwargs.update(control_image_kwargs(pipe, args.control_image))
    except ValueError as error:
        raise SystemExit(f"sadakit bench: {args.pipeline}: {error}") from None
    for option, value in (("height", args.height), ("width", args.width)):
        if value is None:
            continue
        if kind == "audio":
            raise SystemExit(f"sadakit bench: --{option} is for image and video pipelines; {args.pipeline} ({name}) "
                             f"makes audio (its length is the pipeline's audio_length_in_s)")
        call_kwargs[option] = value
    return call_kwargs


def run_command(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    from ..loading import GENERIC_PROMPTS, default_prompts, load_pipeline
    from . import default_methods, markdown, run_bench, write_outputs
    from .scorers import judge_for

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.pipeline, dtype=args.dtype, device=args.device)
    call_kwargs = call_kwargs_for(pipe, args)
    prompts = args.prompts or default_prompts(args.pipeline) or list(GENERIC_PROMPTS)
    result = run_bench(
        pipe, prompts=prompts, seeds=args.seeds, steps=args.steps,
        methods=args.methods or default_methods(args.sweep), repeats=args.repeats, call_kwargs=call_kwargs,
        adasde_file=args.adasde_file, pipeline_name=args.pipeline, sweep=args.sweep, scorer=judge_for(args.pipeline),
    )
    if PartialState().is_main_process:
        paths = write_outputs(result, Path(args.out))
        print(markdown(result))
        print("\nwritten: " + ", ".join(str(p) for p in paths.values()))
    return 0
