"""Silence the known third-party noise inside sadakit's own entry points, and only there.

The demo and the CLI load diffusers/transformers pipelines that print deprecation notices,
missing-torchvision notes and loading bars between sadakit's own lines. :func:`quiet`
drops exactly those (by message, category and emitting logger) for the duration of the
``with`` block and puts everything back afterwards: a user's warning filters, the libraries'
logging verbosity and their progress-bar switches are what they were before, and any warning
not listed here still shows.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import re
import warnings
from collections.abc import Iterator
from types import ModuleType

#: ``warnings``: (regex on the start of the message, category, regex on the warning's module).
KNOWN_WARNINGS: tuple[tuple[str, type[Warning], str], ...] = (
    # recent diffusers on from_pretrained(torch_dtype=...), which the shapes loader and the
    # tiny pipelines pass so that the older diffusers versions sadakit supports work too
    (r"`torch_dtype` is deprecated", FutureWarning, r"diffusers\."),
)

#: Log records (emitting logger, regex on the start of the message).
KNOWN_LOG_RECORDS: tuple[tuple[str, str], ...] = (
    # transformers 5 without torchvision: CLIP/Siglip processors fall back to their PIL versions
    ("transformers.utils.import_utils", r"`\w+ImageProcessor` requires torchvision \(not installed\)"),
    # recent diffusers mark MusicLDM deprecated; sadakit supports it (plugins/audio)
    ("diffusers.pipelines.pipeline_utils", r"The MusicLDMPipeline has been deprecated"),
)


class _DropKnown(logging.Filter):
    """Drops the records of one logger whose message matches one of ``patterns``. Installed on
    the emitting logger: a logger's filters see only the records it creates itself, so records
    of any other logger (and the handlers a user configured) are untouched."""

    def __init__(self, patterns: list[str]) -> None:
        super().__init__()
        self.patterns = [re.compile(p) for p in patterns]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(p.match(message) for p in self.patterns)


def _library_logging() -> list[ModuleType]:
    """The logging modules of diffusers and transformers that are installed."""
    modules = []
    for name in ("diffusers.utils.logging", "transformers.utils.logging"):
        try:
            modules.append(importlib.import_module(name))
        except ImportError:
            continue
    return modules


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Within the block: the :data:`KNOWN_WARNINGS` and :data:`KNOWN_LOG_RECORDS` are dropped,
    and diffusers'/transformers' loading bars are off (a pipeline's own denoising bar is its
    ``set_progress_bar_config``). Everything is restored on exit, also after an exception."""
    by_logger: dict[str, list[str]] = {}
    for logger_name, pattern in KNOWN_LOG_RECORDS:
        by_logger.setdefault(logger_name, []).append(pattern)
    filters = [(logging.getLogger(name), _DropKnown(patterns)) for name, patterns in by_logger.items()]
    libraries = _library_logging()
    # the flag itself, not disable_progress_bar(): transformers' would also switch huggingface_hub's bars
    bars = [(module, module._tqdm_active) for module in libraries if hasattr(module, "_tqdm_active")]
    with warnings.catch_warnings():
        for message, category, module in KNOWN_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category, module=module)
        for logger, drop in filters:
            logger.addFilter(drop)
        for module, _ in bars:
            module._tqdm_active = False
        try:
            yield
        finally:
            for module, was_active in bars:
                module._tqdm_active = was_active
            for logger, drop in filters:
                logger.removeFilter(drop)
