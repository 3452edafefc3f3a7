"""Peak extra memory of one generation, measured the best way the machine allows."""

from __future__ import annotations

import re
import sys
import threading
from typing import Any

import torch


MEMORY_METHODS = {
    "cuda": "CUDA allocator peak (torch.cuda.max_memory_allocated) above the allocation at the start",
    "vmhwm": ("Linux VmHWM (peak resident set) above VmRSS at the start of the run; before each run "
              "glibc's malloc_trim returns freed heap to the OS and /proc/self/clear_refs resets the "
              "peak. Process-wide (Python objects, every thread), page-granular; memory the allocator "
              "kept despite the trim is reused without showing up"),
    "rss-sampled": ("process RSS sampled every 5 ms above the RSS at the start (psutil; no VmHWM reset on "
                    "this OS): process-wide and misses short peaks"),
    "none": "not measured (neither CUDA, Linux VmHWM nor psutil available)",
}


def _proc_status_kib(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", open("/proc/self/status").read(), re.MULTILINE)
    if match is None:
        raise OSError(f"/proc/self/status has no {field}")
    return int(match.group(1))


def _malloc_trim() -> None:
    """Give freed heap back to the OS (glibc), so a run's allocations grow the RSS instead of
    silently reusing pages an earlier run left in the allocator."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the measurement is just less sensitive
        pass


def _reset_vmhwm() -> bool:
    """Reset the kernel's peak-RSS mark of this process ("5" in clear_refs, Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _proc_status_kib("VmHWM") <= _proc_status_kib("VmRSS") + 4
    except OSError:
        return False


def memory_method(device: torch.device) -> str:
    """Which :data:`MEMORY_METHODS` entry :class:`PeakMemory` uses for ``device`` here."""
    if device.type == "cuda":
        return "cuda"
    if sys.platform.startswith("linux") and _reset_vmhwm():
        return "vmhwm"
    try:
        import psutil  # noqa: F401
    except ImportError:
        return "none"
    return "rss-sampled"


class PeakMemory:
    """Peak extra memory of one run, in MiB above the start (see :data:`MEMORY_METHODS`).

    On CPUs the process' resident set is what counts (torch's CPU allocator keeps no peak
    statistic); Linux keeps a resettable high-water mark for it, so peaks of any length are
    seen. It is process-wide: anything else the process allocates meanwhile counts too.
    """

    def __init__(self, device: torch.device, method: str | None = None) -> None:
        self.device = device
        self.method = method or memory_method(device)
        self.peak_mb: float | None = None

    def __enter__(self) -> "PeakMemory":
        if self.method == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        elif self.method == "vmhwm":
            import gc

            gc.collect()
            _malloc_trim()
            _reset_vmhwm()
            self._base = _proc_status_kib("VmRSS") * 1024
        elif self.method == "rss-sampled":
            import gc

            import psutil

            gc.collect()
            _malloc_trim()  # as for VmHWM: otherwise the run may reuse freed pages and show no growth
            self._proc = psutil.Process()
            self._base = self._proc.memory_info().rss
            self._peak = self._base
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self._peak = max(self._peak, self._proc.memory_info().rss)

    def __exit__(self, *exc: Any) -> None:
        if self.method == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mb = (torch.cuda.max_memory_allocated(self.device) - self._base) / 2**20
        elif self.method == "vmhwm":
            self.peak_mb = max(0, _proc_status_kib("VmHWM") * 1024 - self._base) / 2**20
        elif self.method == "rss-sampled":
            self._stop.set()
            self._thread.join()
            self.peak_mb = (self._peak - self._base) / 2**20
