"""Evaluation: the one harness (:func:`compare`), its scorers, and ``sadakit bench`` (baseline vs
SADA, AdaSDE, fewer steps and the peers, on one pipeline). The product never imports this package."""

from .harness import Measured, baseline_vs_sada, compare
from .methods import DEFAULT_METHODS, METHODS, SWEEPS, default_methods, expand_specs, parse_method
from .output import load_result, markdown, summarize, write_outputs
from .runner import BenchResult, CaseResult, run_bench

__all__ = [
    "BenchResult", "CaseResult", "Measured", "baseline_vs_sada", "compare", "DEFAULT_METHODS", "METHODS", "SWEEPS", "default_methods", "expand_specs", "load_result", "markdown", "parse_method",
    "run_bench", "summarize", "write_outputs",
]
