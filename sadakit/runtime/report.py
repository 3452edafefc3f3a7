"""What one generation did: calls computed / skipped / partial per sample, tokens, FLOPs."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class GenerationReport:
    """Counts for the last (or current) generation of an accelerated pipeline.

    ``per_sample`` rows follow the denoiser batch (CFG halves are separate rows that decide
    together). ``network_calls`` counts denoiser forwards actually run (a call where only some
    rows were computed counts once); ``decisions`` holds one letter per call: F full, P partial,
    S skipped, M mixed (some rows skipped).
    """

    family: str = ""
    parameterization: str = ""
    denoiser_calls: int = 0
    network_calls: int = 0
    batch_size: int = 0
    per_sample_computed: list[int] = field(default_factory=list)
    per_sample_skipped: list[int] = field(default_factory=list)
    per_sample_partial: list[int] = field(default_factory=list)
    decisions: str = ""
    #: the call streams one step's calls came in (diffusers' cache-context names such as
    #: ["cond", "uncond"]); rows of stream i follow those of stream i - 1 in ``per_sample_*``
    streams: list = field(default_factory=list)
    control_calls_run: int = 0
    #: with several expert modules (Wan 2.2 A14B's two transformers): the denoiser calls and the
    #: network calls that reached each, by pipeline attribute name; empty with one denoiser
    calls_by_module: dict = field(default_factory=dict)
    network_calls_by_module: dict = field(default_factory=dict)
    tokens_total: int = 0
    tokens_computed: int = 0
    flops_per_call: float | None = None
    flops_saved: float = 0.0
    cache_bytes: int = 0
    #: host time spent in sadakit's own logic (decision, extrapolation, bookkeeping), without
    #: the time its one read per call waits for the device (the network's time, on a GPU)
    overhead_seconds: float = 0.0
    #: device time of sadakit's own kernels, from CUDA events (None off CUDA)
    device_overhead_seconds: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def skipped_calls(self) -> int:
        return self.decisions.count("S")

    @property
    def partial_calls(self) -> int:
        return self.decisions.count("P")

    @property
    def overhead_ms_per_call(self) -> float:
        return 1000.0 * self.overhead_seconds / max(self.denoiser_calls, 1)

    @property
    def device_overhead_ms_per_call(self) -> float | None:
        if self.device_overhead_seconds is None:
            return None
        return 1000.0 * self.device_overhead_seconds / max(self.denoiser_calls, 1)

    @property
    def flops_saved_fraction(self) -> float | None:
        if not self.flops_per_call or not self.denoiser_calls:
            return None
        return self.flops_saved / (self.flops_per_call * self.denoiser_calls)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["skipped_calls"] = self.skipped_calls
        d["partial_calls"] = self.partial_calls
        d["flops_saved_fraction"] = self.flops_saved_fraction
        d["overhead_ms_per_call"] = self.overhead_ms_per_call
        d["device_overhead_ms_per_call"] = self.device_overhead_ms_per_call
        return d

    def __str__(self) -> str:
        lines = [
            f"sadakit report ({self.family}, {self.parameterization})",
            f"  denoiser calls: {self.denoiser_calls}  network forwards: {self.network_calls}"
            f"  skipped: {self.skipped_calls}  partial: {self.partial_calls}",
            f"  decisions: {self.decisions}",
        ]
        if len(self.streams) > 1:
            lines.append(f"  call streams per step: {', '.join(map(str, self.streams))} (rows side by side)")
        if self.calls_by_module:
            lines.append("  calls per module: " + ", ".join(
                f"{name} {calls} ({self.network_calls_by_module.get(name, 0)} run)"
                for name, calls in self.calls_by_module.items()))
        for first, last, (c, s, p) in _runs(
            list(zip(self.per_sample_computed, self.per_sample_skipped, self.per_sample_partial))
        ):
            rows = f"row {first}" if first == last else f"rows {first}-{last}"
            lines.append(f"  {rows}: computed {c} (partial {p}), skipped {s}")
        if self.tokens_total:
            lines.append(
                f"  block tokens computed: {self.tokens_computed}/{self.tokens_total}"
                f" ({100.0 * self.tokens_computed / self.tokens_total:.1f}%)"
            )
        frac = self.flops_saved_fraction
        if frac is not None:
            lines.append(f"  estimated FLOPs saved: {self.flops_saved:.3g} ({100 * frac:.1f}%)")
        device = self.device_overhead_ms_per_call
        lines.append(f"  sadakit overhead: {self.overhead_ms_per_call:.2f} ms per call (host)"
                     + (f", {device:.2f} ms per call on the device" if device is not None else ""))
        if self.cache_bytes:
            lines.append(f"  cache memory: {self.cache_bytes / 2**20:.2f} MiB")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)


def _runs(items: list) -> list[tuple[int, int, object]]:
    """Consecutive equal items as ``(first index, last index, item)``: a batch of 128 rows that
    all decided alike prints as one line, not 128."""
    runs: list[tuple[int, int, object]] = []
    for i, item in enumerate(items):
        if runs and runs[-1][2] == item and runs[-1][1] == i - 1:
            runs[-1] = (runs[-1][0], i, item)
        else:
            runs.append((i, i, item))
    return runs
