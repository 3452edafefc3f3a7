"""Bench results as a Markdown table, JSON and a speed-up vs fidelity plot."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from .runner import BenchResult, CaseResult


def _median(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return None
    finite = [v for v in vals if not math.isinf(v)]
    return statistics.median(finite) if finite else vals[0]


MEAN_PREFIXES = ("adherence",)  # absolute per-case scores in [0, 1]: the table shows the mean


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def summarize(result: BenchResult) -> list[dict]:
    """One row per method: medians over cases (means for adherence scores)."""
    by_method: dict[str, list[CaseResult]] = {}
    for r in result.cases:
        by_method.setdefault(r.method, []).append(r)
    base_flops = _median([r.flops for r in by_method.get("baseline", [])])
    rows = []
    for method, rs in by_method.items():
        keys = sorted({k for r in rs for k in r.fidelity})
        flops = _median([r.flops for r in rs])
        rows.append(
            {
                "method": method,
                "speedup": _median([r.speedup for r in rs]),
                "wall_s": _median([r.wall_s for r in rs]),
                "denoiser_forwards": _median([r.denoiser_forwards for r in rs]),
                "flops_ratio": (flops / base_flops) if flops and base_flops else None,
                "peak_mem_mb": _median([r.peak_mem_mb for r in rs]),
                **{k: (_mean if k.startswith(MEAN_PREFIXES) else _median)([r.fidelity.get(k) for r in rs]) for k in keys},
            }
        )
    return rows


def _fmt(value, spec: str = ".3g") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return format(value, spec)


def markdown(result: BenchResult) -> str:
    rows = summarize(result)
    fid_keys = [k for k in rows[0] if k not in ("method", "speedup", "wall_s", "denoiser_forwards", "flops_ratio", "peak_mem_mb")] if rows else []
    head = ["method", "speed-up", "wall s", "denoiser forwards", "FLOPs vs baseline", "peak extra MiB"] + fid_keys
    lines = [
        f"{result.pipeline}, {result.steps} steps, {len({r.case for r in result.cases})} cases, "
        f"{result.repeats} interleaved repeats (medians), {result.processes} process(es)"
        + (" — INTERRUPTED, partial results" if result.interrupted else ""),
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rows:
        cells = [r["method"], _fmt(r["speedup"], ".2f") + "x", _fmt(r["wall_s"], ".2f"), _fmt(r["denoiser_forwards"], ".0f"),
                 _fmt(r["flops_ratio"], ".2f"), _fmt(r["peak_mem_mb"], ".0f")] + [_fmt(r.get(k)) for k in fid_keys]
        lines.append("| " + " | ".join(cells) + " |")
    for label, reason in result.not_applicable.items():
        lines.append(f"| {label} | not applicable: {reason} |" + " |" * (len(head) - 2))
    for notice in result.notices:
        lines.append(f"\nNote: {notice}")
    return "\n".join(lines)


def write_outputs(result: BenchResult, out_dir: Path) -> dict[str, Path]:
    """Markdown, JSON and (when matplotlib is installed) a PNG plot; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out_dir / "bench.md", "json": out_dir / "bench.json"}
    paths["markdown"].write_text(markdown(result) + "\n")
    payload = result.to_dict()
    payload["summary"] = summarize(result)
    paths["json"].write_text(json.dumps(payload, indent=2, default=lambda v: None))
    plot = _plot(result, out_dir / "bench.png")
    if plot is not None:
        paths["plot"] = plot
    return paths


def _split_label(label: str) -> tuple[str, float | None]:
    name, _, knob = label.partition(":")
    return name, float(knob) if knob else None


def _plot_curves(rows: list[dict], key: str) -> dict[str, list[tuple[float | None, float, float]]]:
    """Method name -> [(knob, speed-up, fidelity capped at 100)] sorted by speed-up."""
    curves: dict[str, list[tuple[float | None, float, float]]] = {}
    for r in rows:
        if r["method"] == "baseline" or r.get(key) is None or r["speedup"] is None:
            continue
        name, knob = _split_label(r["method"])
        curves.setdefault(name, []).append((knob, r["speedup"], min(r[key], 100.0)))
    for points in curves.values():
        points.sort(key=lambda p: p[1])
    return curves


def _plot(result: BenchResult, path: Path) -> Path | None:
    """Fidelity against wall-time speed-up (left) and against FLOPs saved (right, free of timing
    noise); the knobs of one method are joined by a line (its trade-off curve)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = summarize(result)
    key = next((k for k in ("psnr_db", "log_mel_psnr") if any(k in r for r in rows)), None)
    if key is None:
        return None
    by_flops = [{**r, "speedup": 1.0 / r["flops_ratio"] if r.get("flops_ratio") else None} for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for ax, data, xlabel in ((axes[0], rows, "wall-time speed-up vs baseline (same run)"),
                             (axes[1], by_flops, "baseline FLOPs / method FLOPs")):
        for name, points in sorted(_plot_curves(data, key).items()):
            xs, ys = [p[1] for p in points], [p[2] for p in points]
            ax.plot(xs, ys, marker="o", linestyle="-" if len(points) > 1 else "none", label=name)
            for knob, x, y in points:
                if knob is not None:
                    ax.annotate(f"{knob:g}", (x, y), fontsize=7, textcoords="offset points", xytext=(3, 3))
        ax.axvline(1.0, color="grey", linewidth=0.5)
        ax.set_xlabel(xlabel)
    axes[0].set_ylabel(f"{key} vs baseline (capped at 100)")
    axes[1].legend(fontsize=7, loc="best")
    fig.suptitle(f"{result.pipeline}, {result.steps} steps (point labels: knob)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def load_result(path: Path) -> BenchResult:
    """A ``bench.json`` back as a :class:`BenchResult` (to re-plot or re-tabulate a run)."""
    payload = json.loads(Path(path).read_text())
    payload.pop("summary", None)
    cases = [CaseResult(**c) for c in payload.pop("cases")]
    return BenchResult(cases=cases, **payload)
