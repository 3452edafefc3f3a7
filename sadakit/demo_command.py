"""``sadakit demo``: its options and handler (evaluation code; the CLI knows it only by name)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .cli_args import output_directory


def add_command(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="baseline vs SADA on the bundled pipelines; writes outputs")
    demo.add_argument("--out", type=output_directory, default="demo-output")
    demo.add_argument("--quick", action="store_true", help="smaller sizes (for tests)")
    demo.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(Path(args.out), quick=args.quick)
    return 0
