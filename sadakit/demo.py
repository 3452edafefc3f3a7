"""The main job: baseline vs SADA on the bundled pipelines, with speed-up and fidelity.

Each part runs the unaccelerated pipeline and the accelerated one on the same inputs
(alternating, medians of the wall times), prints a table row, and writes its outputs.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

import sadakit


@dataclass
class DemoRow:
    part: str
    steps: int
    calls_computed: int
    baseline_s: float
    sada_s: float
    fidelity: dict[str, float | None] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)

    @property
    def speedup(self) -> float:
        return self.baseline_s / self.sada_s


def time_pair(pipe: Any, run: Callable[[], Any], repeats: int, config: sadakit.SADAConfig | None = None):
    """Alternate baseline and SADA runs; return (baseline output, SADA output, medians, report)."""
    run()  # warm-up: allocations
    sadakit.accelerate(pipe, config)
    run()  # warm-up: the accelerated path counts the denoiser's FLOPs once per shape
    base_t, sada_t = [], []
    base = out = None
    rep = None
    for _ in range(repeats):
        sadakit.remove(pipe)
        t = time.perf_counter()
        base = run()
        base_t.append(time.perf_counter() - t)
        sadakit.accelerate(pipe, config)
        t = time.perf_counter()
        out = run()
        sada_t.append(time.perf_counter() - t)
        rep = sadakit.report(pipe)
    sadakit.remove(pipe)
    return base, out, statistics.median(base_t), statistics.median(sada_t), rep


def image_part(out_dir: Path, quick: bool) -> DemoRow:
    from .metrics.image import psnr, ssim
    from .testing import tiny_sdxl_pipeline
    from .visual import save_comparison, save_image

    size = "tiny" if quick else "medium"
    side = 64 if quick else 256
    steps = 20 if quick else 30
    pipe = tiny_sdxl_pipeline(size=size)

    def run():
        return pipe(
            prompt="a red square on the left", num_inference_steps=steps, height=side, width=side,
            output_type="pt", generator=torch.Generator().manual_seed(0),
        ).images

    base, out, tb, ts, rep = time_pair(pipe, run, repeats=1 if quick else 2)
    paths = [save_image(base[0], out_dir / "sdxl_baseline.png"), save_image(out[0], out_dir / "sdxl_sada.png")]
    paths.append(save_comparison(base[0], out[0], out_dir / "sdxl_comparison.png"))
    return DemoRow(
        part=f"SDXL ({size}, random weights) {side}x{side}",
        steps=steps,
        calls_computed=rep.network_calls,
        baseline_s=tb,
        sada_s=ts,
        fidelity={"psnr_db": psnr(out, base), "ssim": ssim(out, base)},
        outputs=[str(p) for p in paths],
    )


def print_table(rows: list[DemoRow]) -> None:
    print("| part | steps | calls computed | baseline s | SADA s | speed-up | fidelity vs baseline |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        fid = ", ".join(f"{k} {v:.3g}" if v is not None else f"{k} n/a" for k, v in r.fidelity.items())
        print(f"| {r.part} | {r.steps} | {r.calls_computed} | {r.baseline_s:.2f} | {r.sada_s:.2f} | {r.speedup:.2f}x | {fid} |")


def run_demo(out_dir: Path, quick: bool = False) -> list[DemoRow]:
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    parts = [image_part]
    rows = []
    for part in parts:
        row = part(out_dir, quick)
        rows.append(row)
        print(f"done: {row.part}: {row.speedup:.2f}x", flush=True)
    print()
    print_table(rows)
    summary = [dict(asdict(r), speedup=r.speedup) for r in rows]
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\noutputs written to {out_dir}/")
    return rows
