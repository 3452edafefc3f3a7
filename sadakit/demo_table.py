"""The demo's result rows, their table and the pasteable summary (pure formatting, no runs).

Why this order of columns: calls computed, FLOPs and fidelity are the same on every machine;
the wall-time speed-up is not, so it comes last, as a median with its spread over the
interleaved repeats, and is flagged when it is far from what the computed work predicts
(on a shared machine another job's load lands on one side of a pair more than the other).
"""

from __future__ import annotations

import platform
import re
import statistics
from dataclasses import dataclass, field

#: A wall ratio under this fraction of the predicted one (or over its inverse) is load, not SADA.
BUSY_FLOOR = 0.6
BUSY_NOTE = "wall ratio unreliable: machine busy"

TABLE_HEADER = (
    "| part | method | denoiser calls computed | denoiser FLOPs vs baseline "
    "| fidelity vs baseline (adherence: baseline/accelerated) | wall speed-up: median (range) |"
)


@dataclass
class DemoRow:
    """One demo part's numbers: what was computed (calls, FLOPs), how close it came to the
    baseline (fidelity) and how long both took (paired wall times)."""

    part: str
    steps: int  # steps of the accelerated run (AdaSDE: its NFE)
    calls_computed: int
    baseline_s: float  # median
    sada_s: float  # median
    fidelity: dict[str, float | None] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)
    method: str = "SADA"
    baseline_calls: int | None = None  # the baseline's denoiser calls; None: ``steps``
    flops_ratio: float | None = None  # accelerated denoiser FLOPs / baseline's; None: not counted
    baseline_times: list[float] = field(default_factory=list)  # per repeat, paired with sada_times
    sada_times: list[float] = field(default_factory=list)
    #: set when the wall time does not measure the accelerator (then no busy check): why
    wall_note: str | None = None

    @property
    def speedup(self) -> float:
        return self.baseline_s / self.sada_s

    @property
    def total_calls(self) -> int:
        return self.steps if self.baseline_calls is None else self.baseline_calls

    @property
    def wall_ratios(self) -> list[float]:
        """baseline / accelerated of each interleaved pair (without per-repeat times: of the medians)."""
        pairs = [b / a for b, a in zip(self.baseline_times, self.sada_times) if a > 0]
        return pairs or [self.speedup]

    @property
    def predicted_speedup(self) -> float:
        """The speed-up the computed work alone predicts (an upper bound: the VAE, text encoder
        and vocoder are not accelerated): baseline over accelerated FLOPs, else calls."""
        if self.flops_ratio:
            return 1.0 / self.flops_ratio
        return self.total_calls / max(self.calls_computed, 1)

    @property
    def machine_busy(self) -> bool:
        return self.wall_note is None and machine_busy(statistics.median(self.wall_ratios), self.predicted_speedup)


def machine_busy(wall_ratio: float, predicted: float, floor: float = BUSY_FLOOR) -> bool:
    """True when the wall ratio is far below (or far above) what the computed work predicts.

    Below: other jobs slowed the accelerated runs, or the whole run so much that fixed costs
    swamp the saving. Above: they slowed the baseline runs; fewer FLOPs cannot buy more time.
    """
    return wall_ratio < floor * predicted or wall_ratio > predicted / floor


def speedup_text(ratios: list[float], runs: bool = True) -> str:
    """``1.8x (1.6-2.0, 3 runs)``: median and range of the paired ratios; one run is one figure.
    ``runs=False`` leaves the count out (``1.8x (1.6-2.0)``, for a progress bar's last line)."""
    median = statistics.median(ratios)
    if len(ratios) < 2:
        return f"{median:.2f}x (1 run)" if runs else f"{median:.2f}x"
    count = f", {len(ratios)} runs" if runs else ""
    return f"{median:.2f}x ({min(ratios):.2f}-{max(ratios):.2f}{count})"


def wall_text(row: DemoRow) -> str:
    """The wall cell: the figure, and why it is not the result when it is not."""
    text = speedup_text(row.wall_ratios)
    if row.wall_note:
        return f"{text}; {row.wall_note}"
    if row.machine_busy:
        return f"{text}; {BUSY_NOTE} (computed work predicts up to {row.predicted_speedup:.2f}x)"
    return text


#: Display names of fidelity keys: (label, format of the value).
_FIDELITY = {
    "psnr_db": ("PSNR", "{:.1f} dB"),
    "ssim": ("SSIM", "{:.3f}"),
    "temporal_psnr_db": ("temporal PSNR", "{:.1f} dB"),
    "log_mel_psnr_db": ("log-mel PSNR", "{:.1f} dB"),
    "generated_mel_psnr_db": ("mel PSNR before vocoder", "{:.1f} dB"),
    "lsd_db": ("log-spectral distance", "{:.3f} dB"),
    "rmse_to_baseline": ("RMSE", "{:.2g}"),
}


def fidelity_parts(fidelity: dict[str, float | None]) -> list[str]:
    """``{"psnr_db": 31.2, "adherence_baseline": 1, "adherence_sada": 1}`` ->
    ``["PSNR 31.2 dB", "adherence 100%/100%"]``: known metrics named, baseline/accelerated
    adherence pairs joined, anything else as ``key value``; the order of ``fidelity`` kept."""
    parts, used = [], set()
    for key, value in fidelity.items():
        if key in used:
            continue
        if key.endswith("adherence_baseline"):
            prefix = key[: -len("_baseline")]
            other = next((k for k in fidelity if k.startswith(prefix + "_") and k != key), None)
            if other is not None:
                used.add(other)
                parts.append(f"{prefix.replace('_', ' ')} {_percent(value)}/{_percent(fidelity[other])}")
                continue
        label, fmt = _FIDELITY.get(key, (None, None))
        fewer = re.fullmatch(r"fewer_steps_(\d+)_rmse", key)
        if value is None:
            parts.append(f"{label or key} n/a")
        elif label is not None:
            parts.append(f"{label} {fmt.format(value)}")
        elif fewer is not None:
            parts.append(f"RMSE of {fewer.group(1)} plain steps {value:.2g}")
        else:
            parts.append(f"{key} {value:.3g}")
    return parts


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.0f}%"


def table_row(row: DemoRow) -> str:
    """One markdown row: machine-independent cells first, the wall speed-up last."""
    flops = "n/a" if row.flops_ratio is None else f"{row.flops_ratio:.2f}x"
    cells = [row.part, row.method, f"{row.calls_computed}/{row.total_calls}", flops,
             ", ".join(fidelity_parts(row.fidelity)), wall_text(row)]
    return "| " + " | ".join(cells) + " |"


def markdown_table(rows: list[DemoRow]) -> str:
    return "\n".join([TABLE_HEADER, "|" + "---|" * TABLE_HEADER.count(" | ") + "---|"] + [table_row(r) for r in rows])


def picture_caption(row: DemoRow, about: str | None = None) -> list[str]:
    """The lines drawn under a comparison picture: what it shows (``about``) and the row's numbers."""
    return [
        row.part if about is None else f"{row.part}: {about}",
        f"{row.method}: {row.calls_computed}/{row.total_calls} denoiser calls computed"
        + ("" if row.flops_ratio is None else f", {row.flops_ratio:.2f}x the baseline's FLOPs"),
        "vs baseline: " + ", ".join(fidelity_parts(row.fidelity)[:2]),
        "wall speed-up " + wall_text(row),
    ]


def versions() -> dict[str, str]:
    """What produced the numbers, for the pasteable summary (:func:`sadakit.doctor.versions_report`'s
    versions, and the CPU threads the wall times ran on)."""
    import os

    import torch

    from .doctor import versions_report

    found = versions_report()
    picked = {name: found[name] for name in ("sadakit", "torch", "diffusers", "transformers", "python") if name in found}
    picked["machine"] = f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads"
    return picked


def summary_markdown(rows: list[DemoRow], total_seconds: float, found: dict[str, str]) -> str:
    """A few lines to paste into an issue: versions, the table, total time, what to trust."""
    minutes, seconds = divmod(round(total_seconds), 60)
    lines = [
        "### sadakit demo",
        "",
        ", ".join(value if name == "machine" else f"{name} {value}" for name, value in found.items())
        + f"; total {minutes} min {seconds:02d} s",
        "",
        markdown_table(rows),
        "",
        "Calls, FLOPs and fidelity do not depend on the machine; the wall speed-up is the median "
        "(range) of baseline/accelerated pairs run alternately.",
    ]
    busy = [r.part for r in rows if r.machine_busy]
    if busy:
        lines.append(f"{len(busy)} of {len(rows)} parts ran while the machine was busy (wall ratio far from "
                     "what the computed work predicts): rerun on idle cores to time them.")
    return "\n".join(lines) + "\n"
