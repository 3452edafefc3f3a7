"""The one harness that runs methods against a baseline on a pipeline and its inputs.

Every comparison in sadakit (``sadakit bench``, ``sadakit demo``, the bundled models'
``compare``, the benchmark scripts) goes through :func:`compare`, so the protocol is the same
everywhere:

* warm-ups: each method runs ``warmups`` times untimed first (allocations; SADA counts the
  denoiser's FLOPs once per shape);
* interleaved repeats: the methods run in turn ``repeats`` times, so the noise of a shared
  machine (+-30 %, occasional 2-3x spikes) hits all alike; callers take medians;
* denoiser forwards: counted at the denoiser the plugin registry names, on every run;
* FLOPs and peak memory (``cost=True``): one more, untimed generation per method under torch's
  flop counter and :class:`~sadakit.bench.memory.PeakMemory`;
* restoration check: after every removal the pipeline's fingerprint must equal the one before
  the comparison (:mod:`sadakit.bench.restoration`), else :class:`PipelineNotRestoredError`.

A method is anything with ``label``, ``apply(pipe)``, ``remove(pipe)``, ``call_kwargs(kwargs)``
and ``report(pipe)`` (:class:`sadakit.bench.methods.Method`). ``run(kwargs)`` makes one output;
``make_kwargs()`` gives fresh call arguments for every run (a seeded generator is consumed).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

import torch

from ..errors import UnsupportedPipelineError
from ..registry import find_plugin
from .memory import PeakMemory, memory_method
from .restoration import PipelineNotRestoredError, fingerprint_diff, pipeline_fingerprint


class Method(Protocol):
    label: str

    def apply(self, pipe: Any) -> None: ...

    def remove(self, pipe: Any) -> None: ...

    def call_kwargs(self, kwargs: dict) -> dict: ...

    def report(self, pipe: Any) -> dict: ...


@dataclass
class Measured:
    """One method's runs in one comparison."""

    label: str
    output: Any = None  # the last output (runs are deterministic per seed)
    times: list[float] = field(default_factory=list)  # one per timed repeat, in run order
    forwards: int | None = None  # denoiser forwards of one generation (None: no layer to count at)
    report: dict = field(default_factory=dict)  # the method's report after its last run
    flops: float | None = None
    peak_mem_mb: float | None = None

    @property
    def median_s(self) -> float:
        return statistics.median(self.times)


def denoiser_module(pipe: Any) -> torch.nn.Module:
    """The denoiser the pipeline's plugin names (the registry's answer, not an attribute guess)."""
    try:
        return find_plugin(pipe).denoiser(pipe).module
    except UnsupportedPipelineError as error:
        raise UnsupportedPipelineError(f"cannot compare on {type(pipe).__name__}: {error}") from None


def denoiser_device(pipe: Any) -> torch.device:
    """Where the denoiser's weights live (CPU for a denoiser without parameters)."""
    return next(denoiser_module(pipe).parameters(), torch.empty(0)).device


class ForwardCounter:
    """Counts real denoiser forwards at its first parameterised layer (hooks that replace the
    denoiser's forward bypass module pre-hooks on the denoiser itself). A denoiser without
    parameters (the testbed's exact one) has nothing to count at: ``count`` stays None."""

    def __init__(self, denoiser: torch.nn.Module) -> None:
        first = next((m for m in denoiser.modules()
                      if not list(m.children()) and any(True for _ in m.parameters(recurse=False))), None)
        self.count: int | None = None if first is None else 0
        self._handle = None if first is None else first.register_forward_pre_hook(self._hook)

    def _hook(self, *_: Any) -> None:
        self.count += 1

    def reset(self) -> None:
        if self.count is not None:
            self.count = 0

    def close(self) -> None:
        if self._handle is not None:
            self._handle.remove()


OnFailure = Callable[[Method, Exception], None]


def compare(
    pipe: Any,
    run: Callable[[dict], Any],
    methods: Sequence[Method],
    make_kwargs: Callable[[], dict],
    repeats: int,
    warmups: int = 1,
    cost: bool = False,
    memory: str | None = None,
    on_run: Callable[[str], None] | None = None,
    on_failure: OnFailure | None = None,
) -> dict[str, Measured]:
    """Run ``methods`` (the baseline among them, usually first) on ``pipe``; see the module doc.

    ``on_run(what)`` is called after every generation (progress). ``on_failure(method, error)``
    decides what a failing method means: without it the error propagates; with it the method is
    dropped from the rest of the comparison (a :class:`PipelineNotRestoredError` always propagates).
    """
    done = on_run or (lambda what: None)
    denoiser = denoiser_module(pipe)
    counter = ForwardCounter(denoiser)
    alive = list(methods)
    results = {m.label: Measured(m.label) for m in alive}
    try:
        reference = pipeline_fingerprint(pipe)

        def attempt(m: Method, what: str, timed: bool = False, measure: PeakMemory | None = None) -> None:
            try:
                _one_run(pipe, run, m, make_kwargs(), counter, reference, results[m.label], timed, measure)
            except PipelineNotRestoredError:
                raise
            except Exception as error:
                if on_failure is None:
                    raise
                on_failure(m, error)
                alive.remove(m)
                del results[m.label]
                return
            done(what)

        for _ in range(warmups):
            for m in list(alive):
                attempt(m, f"{m.label} warm-up")
        for _ in range(repeats):
            for m in list(alive):
                attempt(m, m.label, timed=True)
        if cost:
            device = denoiser_device(pipe)
            method = memory or memory_method(device)
            for m in list(alive):
                attempt(m, f"{m.label} FLOPs/memory", measure=PeakMemory(device, method))
    finally:
        counter.close()
    return results


def _one_run(pipe: Any, run: Callable[[dict], Any], method: Method, kwargs: dict, counter: ForwardCounter,
             reference: tuple, into: Measured, timed: bool, measure: PeakMemory | None) -> None:
    """One generation of ``method``; removal is checked against ``reference`` even on failure."""
    method.apply(pipe)
    try:
        counter.reset()
        call_kwargs = method.call_kwargs(kwargs)
        if measure is not None:
            from torch.utils.flop_counter import FlopCounterMode

            flops = FlopCounterMode(display=False)
            with measure, flops:
                run(call_kwargs)  # the output is the timed runs' (same seed, same output)
            into.flops, into.peak_mem_mb = float(flops.get_total_flops()), measure.peak_mb
        else:
            started = time.perf_counter()
            into.output = run(call_kwargs)
            if timed:
                into.times.append(time.perf_counter() - started)
        into.forwards = counter.count
        into.report = method.report(pipe)
    finally:
        method.remove(pipe)
        after = pipeline_fingerprint(pipe)
        if after != reference:
            raise PipelineNotRestoredError(
                f"{method.label} did not restore the pipeline on removal ({fingerprint_diff(reference, after)}); "
                f"every method measured after it would run on a modified pipeline, so the comparison stops. "
                f"Leave {method.label} out (--methods) or fix its remove()."
            )


def baseline_vs_sada(
    pipe: Any,
    run: Callable[[dict], Any],
    make_kwargs: Callable[[], dict],
    config: Any = None,
    repeats: int = 3,
    warmups: int = 1,
    on_run: Callable[[str], None] | None = None,
) -> tuple[Measured, Measured]:
    """The commonest comparison: the plain pipeline and ``sadakit.accelerate(pipe, config)``
    (None: the family's defaults). The SADA side's ``report`` holds the runtime's report."""
    from .methods import SADA, Baseline

    sada = SADA(name="sada")
    sada.config = config
    results = compare(pipe, run, [Baseline(name="baseline"), sada], make_kwargs, repeats, warmups, on_run=on_run)
    return results["baseline"], results["sada"]
