"""Command-line argument checks that run before any model is loaded.

Why: loading a pipeline takes seconds to minutes; an argument that cannot work (zero steps, an
output path that cannot be written, an extension no pipeline writes) must fail at once, in one
line, naming the flag and what is allowed, not after the generation with a traceback.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from .outputs import OutputFormat


def known_suffixes() -> tuple[str, ...]:
    """Every extension some kind of output is written as (built-in, and those plugins add)."""
    from .registry import output_formats

    return tuple(dict.fromkeys(s for fmt in output_formats().values() for s in fmt.suffixes))


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0 (seeds)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def image_side(text: str) -> int:
    """argparse type: a positive multiple of 8 (every latent pipeline downsamples by 8)."""
    value = positive_int(text)
    if value % 8:
        raise argparse.ArgumentTypeError(f"must be a multiple of 8 (16 for Flux), got {value}")
    return value


def existing_file(text: str) -> str:
    """argparse type: a path to an existing regular file."""
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"not a regular file: {text}")
    return text


def output_file(text: str) -> str:
    """argparse type: an output file path (an extension some kind of output is written as) whose
    directory exists or can be created, and is writable."""
    path = Path(text)
    allowed = known_suffixes()
    if path.suffix.lower() not in allowed:
        raise argparse.ArgumentTypeError(f"{text!r} has no output extension; use one of {', '.join(allowed)}")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a directory; give a file name")
    _writable_directory(path.parent, text)
    return text


def output_directory(text: str) -> str:
    """argparse type: a directory that exists or can be created, and is writable."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} exists and is not a directory")
    _writable_directory(path if path.exists() else path.parent, text)
    return text


def _writable_directory(directory: Path, text: str) -> None:
    existing = directory if str(directory) else Path(".")
    while not existing.exists():  # the nearest existing ancestor decides whether it can be created
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot write {text!r}: {existing} is not a writable directory")


def check_output_kind(out: str, fmt: OutputFormat, pipeline_name: str) -> None:
    """The output extension fits what the pipeline makes (checked after loading, before generating)."""
    if Path(out).suffix.lower() not in fmt.suffixes:
        raise SystemExit(f"sadakit generate: {pipeline_name} makes {fmt.noun}; --out must end in "
                         f"{', '.join(fmt.suffixes)}, got {out!r}")