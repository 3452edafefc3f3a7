"""Baseline vs SADA wall time measured in one run: warm-ups, alternating repeats, medians.

Machines are shared and noisy (+-30 %, occasional 2-3x spikes): alternating the two runs makes
noise hit both alike, and medians drop the spikes. The per-repeat times are kept too, so a
caller can show the spread instead of one figure that looks exact.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import sadakit


@dataclass
class PairTiming:
    baseline: Any  # output of the last baseline run
    accelerated: Any  # output of the last accelerated run
    baseline_s: float  # median
    accelerated_s: float  # median
    report: sadakit.GenerationReport
    baseline_times: list[float] = field(default_factory=list)  # one per repeat, in run order
    accelerated_times: list[float] = field(default_factory=list)  # paired with baseline_times

    @property
    def speedup(self) -> float:
        return self.baseline_s / self.accelerated_s

    @property
    def flops_ratio(self) -> float | None:
        """Accelerated denoiser FLOPs over the baseline's, from the report (None: not counted).
        Unlike the wall times, it does not depend on what else the machine is doing."""
        saved = self.report.flops_saved_fraction
        return None if saved is None else 1.0 - saved


def time_pair(
    pipe: Any,
    run: Callable[[], Any],
    repeats: int,
    config: sadakit.SADAConfig | None = None,
    on_run: Callable[[str], None] | None = None,
) -> PairTiming:
    """Time ``run()`` on the plain and on the accelerated ``pipe``; leaves ``pipe`` plain.

    ``on_run(what)`` is called after every run (2 warm-ups + 2 x ``repeats``), for progress bars.
    """
    done = on_run or (lambda what: None)
    sadakit.remove(pipe)
    run()  # warm-up: allocations
    done("baseline warm-up")
    sadakit.accelerate(pipe, config)
    run()  # warm-up: the accelerated path counts the denoiser's FLOPs once per shape
    done("accelerated warm-up")
    base_t, sada_t = [], []
    base = out = None
    for _ in range(repeats):
        sadakit.remove(pipe)
        started = time.perf_counter()
        base = run()
        base_t.append(time.perf_counter() - started)
        done("baseline")
        sadakit.accelerate(pipe, config)
        started = time.perf_counter()
        out = run()
        sada_t.append(time.perf_counter() - started)
        done("accelerated")
    report = sadakit.report(pipe)
    sadakit.remove(pipe)
    return PairTiming(base, out, statistics.median(base_t), statistics.median(sada_t), report, base_t, sada_t)
