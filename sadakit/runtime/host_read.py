"""The one device-to-host read per call, and the clocks that keep it out of the overhead figure.

On a GPU the read waits for everything queued before it (the previous network call, usually).
It is done as a non-blocking copy into a pinned buffer followed by waiting on an event for
that copy alone; the time spent waiting is counted apart, so the report's host overhead is
sadakit's own work and not the network's. sadakit's kernels (decision, merge, record) are
timed on the device with CUDA events, read once at the end of a generation.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Iterator

import torch

#: the process group whose ranks must take the same decision (context parallelism), if any
_vote_group: ContextVar[Any] = ContextVar("sadakit_vote_group", default=None)
_pinned: dict[tuple, torch.Tensor] = {}
_waited = [0.0]  # seconds this process has spent waiting for a device in these reads


@contextmanager
def voting(group: Any) -> Iterator[None]:
    """Within this block, every read is first reduced (minimum) across ``group`` (None: no group),
    so that all its ranks read the same values (see :mod:`.parallel`)."""
    token = _vote_group.set(group)
    try:
        yield
    finally:
        _vote_group.reset(token)


def to_host(values: torch.Tensor) -> list[float]:
    """``values`` (1-D) as host floats: the one read of a call."""
    group = _vote_group.get()
    if group is not None:
        import torch.distributed as dist

        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.MIN, group=group)
    if values.device.type != "cuda":
        started = time.perf_counter()
        host = values.tolist()  # on the CPU nothing is waited for; on MPS, a plain copy
        if values.device.type != "cpu":
            _waited[0] += time.perf_counter() - started
        return host
    key = (values.numel(), values.dtype)
    buffer = _pinned.get(key)
    if buffer is None:
        if len(_pinned) > 64:
            _pinned.clear()
        buffer = _pinned[key] = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
    buffer.copy_(values, non_blocking=True)
    done = torch.cuda.Event()
    done.record(torch.cuda.current_stream(values.device))
    started = time.perf_counter()
    done.synchronize()
    _waited[0] += time.perf_counter() - started
    return buffer.tolist()


def waited_seconds() -> float:
    """Total time spent waiting for the device in :func:`to_host` (subtract it from host timings)."""
    return _waited[0]


class DeviceTimer:
    """sadakit's kernel time on a CUDA device: an event pair around each region of its work,
    summed when the generation ends (one wait then). Does nothing off CUDA."""

    def __init__(self) -> None:
        self._pairs: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self._open: torch.cuda.Event | None = None

    def start(self, device: torch.device) -> None:
        if device.type == "cuda":
            self._open = torch.cuda.Event(enable_timing=True)
            self._open.record(torch.cuda.current_stream(device))

    def stop(self, device: torch.device) -> None:
        if self._open is not None and device.type == "cuda":
            end = torch.cuda.Event(enable_timing=True)
            end.record(torch.cuda.current_stream(device))
            self._pairs.append((self._open, end))
        self._open = None

    def total_seconds(self) -> float | None:
        """The summed device time of the regions (None when nothing ran on CUDA); clears them."""
        pairs, self._pairs, self._open = self._pairs, [], None
        if not pairs:
            return None
        pairs[-1][1].synchronize()
        return sum(start.elapsed_time(end) for start, end in pairs) / 1000.0
