"""The report's bookkeeping: each denoiser call's rows and letter, tokens, and FLOPs saved.

FLOPs are counted exactly, once per input shape, by running that shape's first full call
under ``torch.utils.flop_counter.FlopCounterMode`` (each eligible block's share too); every
later call is accounted from those counts.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from .report import GenerationReport


class Accounting:
    """The current generation's report, the last finished one, and the measured FLOPs."""

    def __init__(self, family: str, measured: dict[tuple, tuple[float, dict[str, float]]] | None = None) -> None:
        self.family = family
        self.current = GenerationReport(family=family)
        self.last: GenerationReport | None = None
        # shape -> (total, per block); shared by the sessions of one network (see .learned)
        self._measured: dict[tuple, tuple[float, dict[str, float]]] = {} if measured is None else measured
        self._counter = None
        self._measuring_blocks: dict[str, float] = {}
        self.call_shape: tuple | None = None  # the shape of the call being executed
        self.expert = 0  # the expert module the call reaches (FLOPs are measured per module and shape)

    def note(self, text: str) -> None:
        if text not in self.current.notes:
            self.current.notes.append(text)

    def finish(self, cache_bytes: int | None) -> None:
        """Close the current generation's report (kept as ``last`` if it saw any call)."""
        if self.current.denoiser_calls:
            if cache_bytes is not None:
                self.current.cache_bytes = cache_bytes
            self.last = self.current
        self.current = GenerationReport(family=self.family)

    def report(self) -> GenerationReport | None:
        return self.current if self.current.denoiser_calls else self.last

    def grow_rows(self, rows: int) -> None:
        """Per-row counters for at least ``rows`` rows (streams add theirs as they appear)."""
        report = self.current
        for counts in (report.per_sample_computed, report.per_sample_skipped, report.per_sample_partial):
            counts.extend([0] * (rows - len(counts)))
        report.batch_size = max(report.batch_size, len(report.per_sample_computed))

    # ------------------------------------------------------------------ calls
    def account_call(self, first_row: int, batch: int, computed_rows: list[int], partial: bool,
                     stream: Any, shape: tuple) -> None:
        """One denoiser call: its rows (at ``first_row`` among the step's), letter and FLOPs."""
        report = self.current
        self.grow_rows(first_row + batch)
        computed = set(computed_rows)
        partial = partial and bool(computed_rows)
        for r in range(batch):
            if r in computed:
                report.per_sample_computed[first_row + r] += 1
                report.per_sample_partial[first_row + r] += int(partial)
            else:
                report.per_sample_skipped[first_row + r] += 1
        skipped = batch - len(computed)
        report.decisions += "S" if not computed else ("M" if skipped else ("P" if partial else "F"))
        report.denoiser_calls += 1
        report.network_calls += 1 if computed else 0
        if stream is not None and stream not in report.streams:
            report.streams.append(stream)
        measured = self._measured.get(self._key(shape))
        if measured is not None:
            report.flops_per_call = measured[0]
            report.flops_saved += measured[0] * skipped / batch

    def account_block(self, name: str, n_tokens: int, k_tokens: int, rows: int, module_flops: float | None) -> None:
        """Tokens of one block forward, and the FLOPs its pruned tokens saved."""
        self.current.tokens_total += n_tokens * rows
        self.current.tokens_computed += k_tokens * rows
        if module_flops is not None and n_tokens:
            b = self.call_shape[0] if self.call_shape else rows
            self.current.flops_saved += module_flops * (1.0 - k_tokens / n_tokens) * rows / b

    # ------------------------------------------------------------------ FLOP measurement
    def _key(self, shape: tuple) -> tuple:
        return (self.expert, *shape)

    def needs_measuring(self, enabled: bool, shape: tuple) -> bool:
        return enabled and self._key(shape) not in self._measured

    def forward_measured(self, forward: Callable, args: tuple, kwargs: dict, shape: tuple) -> Any:
        """Run the full network once for this shape, counting its FLOPs (and each block's)."""
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        self._counter = counter
        self._measuring_blocks = {}
        try:
            with counter:
                out = forward(*args, **kwargs)
        finally:
            self._counter = None
        self._measured[self._key(shape)] = (float(counter.get_total_flops()), dict(self._measuring_blocks))
        return out

    @torch.compiler.disable
    def flops_before(self) -> float:
        counter = self._counter
        return counter.get_total_flops() if counter is not None else 0

    @torch.compiler.disable
    def block_measured(self, name: str, flops_before: float) -> None:
        """A block's FLOPs during the measured call (blocks may run several times: summed)."""
        counter = self._counter
        if counter is not None:
            flops = float(counter.get_total_flops() - flops_before)
            self._measuring_blocks[name] = self._measuring_blocks.get(name, 0.0) + flops

    def block_flops(self, name: str) -> float | None:
        """FLOPs of one full forward of a named block in a full call of this call's shape."""
        measured = self._measured.get(self._key(self.call_shape)) if self.call_shape else None
        if measured is None:
            return None
        return measured[1].get(name) or None
