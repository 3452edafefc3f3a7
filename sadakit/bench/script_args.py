"""The options every benchmark script shares, checked like the CLI's (``sadakit.cli_args``).

Why one place: the scripts in ``benchmarks/`` and ``scripts/`` measure with the same harness,
so ``--repeats``, ``--threads``, ``--seed`` and ``--json`` mean the same in each of them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..cli_args import non_negative_int, positive_int


def script_parser(doc: str | None, repeats: int = 3, threads: int = 2) -> argparse.ArgumentParser:
    """A parser with the shared options; ``doc``'s first line is the description."""
    parser = argparse.ArgumentParser(description=(doc or "").strip().splitlines()[0] if doc else None)
    parser.add_argument("--repeats", type=positive_int, default=repeats, help="interleaved timed repeats (medians)")
    parser.add_argument("--threads", type=positive_int, default=threads,
                        help="torch CPU threads (1 on a shared, loaded machine)")
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    return parser


def start(args: argparse.Namespace) -> None:
    """Apply the shared options that act before measuring (threads)."""
    import torch

    torch.set_num_threads(args.threads)


def write_json(args: argparse.Namespace, rows: Any) -> None:
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2, default=str))
