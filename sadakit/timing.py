"""Baseline vs SADA wall time measured in one run: warm-ups, alternating repeats, medians.

Machines are shared and noisy (+-30 %, occasional 2-3x spikes): alternating the two runs makes
noise hit both alike, and medians drop the spikes.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

import sadakit


@dataclass
class PairTiming:
    baseline: Any  # output of the last baseline run
    accelerated: Any  # output of the last accelerated run
    baseline_s: float  # median
    accelerated_s: float  # median
    report: sadakit.GenerationReport

    @property
    def speedup(self) -> float:
        return self.baseline_s / self.accelerated_s


def time_pair(pipe: Any, run: Callable[[], Any], repeats: int, config: sadakit.SADAConfig | None = None) -> PairTiming:
    """Time ``run()`` on the plain and on the accelerated ``pipe``; leaves ``pipe`` plain."""
    sadakit.remove(pipe)
    run()  # warm-up: allocations
    sadakit.accelerate(pipe, config)
    run()  # warm-up: the accelerated path counts the denoiser's FLOPs once per shape
    base_t, sada_t = [], []
    base = out = None
    for _ in range(repeats):
        sadakit.remove(pipe)
        started = time.perf_counter()
        base = run()
        base_t.append(time.perf_counter() - started)
        sadakit.accelerate(pipe, config)
        started = time.perf_counter()
        out = run()
        sada_t.append(time.perf_counter() - started)
    report = sadakit.report(pipe)
    sadakit.remove(pipe)
    return PairTiming(base, out, statistics.median(base_t), statistics.median(sada_t), report)
