"""The main job: baseline vs SADA (and AdaSDE where coefficients are shipped) on the bundled pipelines.

Each part runs the unaccelerated pipeline and the accelerated one on the same inputs
(alternating, medians of the wall times), prints a table row, and writes its outputs.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .timing import time_pair

#: The shipped notes coefficients the demo runs (docs/adasde.md, "notes model", says why these).
NOTES_DEMO_NFE = 5
NOTES_DEMO_SOLVER = "euler"


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


def image_part(out_dir: Path, quick: bool) -> DemoRow:
    from .metrics.image import psnr, ssim
    from .testing import tiny_sdxl_pipeline
    from .visual import save_comparison, save_image

    size = "tiny" if quick else "medium"
    side = 64 if quick else 256
    steps = 20 if quick else 50
    pipe = tiny_sdxl_pipeline(size=size)

    def run():
        return pipe(
            prompt="a red square on the left", num_inference_steps=steps, height=side, width=side,
            output_type="pt", generator=torch.Generator().manual_seed(0),
        ).images

    t = time_pair(pipe, run, repeats=1 if quick else 2)
    base, out, tb, ts, rep = t.baseline, t.accelerated, t.baseline_s, t.accelerated_s, t.report
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


def testbed_part(out_dir: Path, quick: bool) -> DemoRow:
    """The analytic testbed: exact denoiser, so the fidelity numbers mean something."""
    from .testbeds.solvers import make_pipeline

    steps = 30 if quick else 50
    pipe = make_pipeline("latent-4x16x16", "dpm++2m")
    z = torch.randn(32 if quick else 128, *pipe.testbed.mixture.data_shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def run():
        return pipe(num_inference_steps=steps, latents=z).samples

    t = time_pair(pipe, run, repeats=1 if quick else 3)
    base, out, tb, ts, rep = t.baseline, t.accelerated, t.baseline_s, t.accelerated_s, t.report
    fewer_steps = rep.network_calls
    fewer = pipe(num_inference_steps=fewer_steps, latents=z).samples

    def rmse(a, b):
        return float((a - b).reshape(a.shape[0], -1).pow(2).mean(1).sqrt().median())

    summary = out_dir / "testbed.json"
    summary.write_text(json.dumps({"steps": steps, "sada_calls": rep.network_calls, "decisions": rep.decisions}))
    return DemoRow(
        part="Gaussian-mixture testbed, DPM-Solver++, 1024-d (exact denoiser at ~2 ms/call: a fidelity check, wall time is sadakit overhead)",
        steps=steps,
        calls_computed=rep.network_calls,
        baseline_s=tb,
        sada_s=ts,
        fidelity={
            "rmse_to_baseline": rmse(out, base),
            f"fewer_steps_{fewer_steps}_rmse": rmse(fewer, base),
        },
        outputs=[str(summary)],
    )


def audio_part(out_dir: Path, quick: bool) -> DemoRow:
    from .audio_io import pipeline_sample_rate, write_wav
    from .metrics.audio import log_mel_psnr, log_spectral_distance
    from .plugins.audio import fix_musicldm
    from .testing import tiny_musicldm_pipeline

    size = "tiny" if quick else "medium"
    seconds = 0.64 if quick else 5.12
    steps = 20 if quick else 50
    pipe = tiny_musicldm_pipeline(size=size)
    fix_musicldm(pipe)  # transformers 5 vs diffusers' MusicLDM, see README

    def run():
        return pipe("a calm piano note", num_inference_steps=steps, audio_length_in_s=seconds,
                    generator=torch.Generator().manual_seed(0), output_type="np").audios

    t = time_pair(pipe, run, repeats=1 if quick else 2)
    base, out, tb, ts, rep = t.baseline, t.accelerated, t.baseline_s, t.accelerated_s, t.report
    rate = pipeline_sample_rate(pipe)
    paths = write_wav(out_dir / "musicldm_baseline.wav", base, rate) + write_wav(out_dir / "musicldm_sada.wav", out, rate)
    return DemoRow(
        part=f"MusicLDM ({size}, random weights) {seconds:g} s",
        steps=steps,
        calls_computed=rep.network_calls,
        baseline_s=tb,
        sada_s=ts,
        fidelity={"log_mel_psnr_db": log_mel_psnr(out, base, rate), "lsd_db": log_spectral_distance(out, base, rate)},
        outputs=[str(p) for p in paths],
    )


def bundled_part(out_dir: Path, quick: bool) -> DemoRow:
    """The bundled trained shapes model (real trajectories, ~13 MB of weights in the package)."""
    from .bundled import compare_sada, load_shapes_pipeline
    from .visual import save_image

    pipe = load_shapes_pipeline()
    steps = 30 if quick else 50
    cmp = compare_sada(pipe, None, "default", n_prompts=4 if quick else 16, repeats=1 if quick else 3, num_inference_steps=steps)
    grid_base = torch.cat(list(cmp.baseline_images[:8]), dim=-1)
    grid_sada = torch.cat(list(cmp.sada_images[:8]), dim=-1)
    path = save_image(torch.cat([grid_base, grid_sada], dim=-2), out_dir / "shapes_baseline_top_sada_bottom.png")
    row = cmp.row()
    return DemoRow(
        part="bundled trained shapes model (SD architecture, 32x32)",
        steps=steps,
        calls_computed=row["network_calls"],
        baseline_s=row["baseline_s"],
        sada_s=row["sada_s"],
        fidelity={
            "psnr_db": row["psnr_db"],
            "ssim": row["ssim"],
            "adherence_baseline": row["baseline_adherence"],
            "adherence_sada": row["sada_adherence"],
        },
        outputs=[str(path)],
    )


def _alternate_schedulers(pipe, runs: dict, repeats: int) -> tuple[dict, dict[str, float]]:
    """Run ``runs[name] = (scheduler, make_output)`` alternately ``repeats`` times on ``pipe``;
    the last outputs and the median wall time of each. Why alternate: the machine is shared,
    and interleaving spreads its load over both sides. ``pipe`` keeps the first scheduler."""
    import statistics
    import time

    times: dict[str, list[float]] = {name: [] for name in runs}
    outputs: dict = {}
    try:
        for _ in range(repeats):
            for name, (scheduler, make_output) in runs.items():
                pipe.scheduler = scheduler
                started = time.perf_counter()
                outputs[name] = make_output()
                times[name].append(time.perf_counter() - started)
    finally:
        pipe.scheduler = next(iter(runs.values()))[0]
    return outputs, {name: statistics.median(t) for name, t in times.items()}


def bundled_adasde_part(out_dir: Path, quick: bool) -> DemoRow | None:
    """AdaSDE on the shapes model: 5 calls with the shipped learned-churn Euler coefficients
    against the default 50 Euler steps (alternating runs, medians)."""
    from .bundled import DEFAULT_STEPS, eval_prompts, generate, load_shapes_pipeline, prompt_adherence
    from .bundled.shapes_adasde import available_shapes_adasde, shapes_adasde_path, shapes_adasde_scheduler
    from .metrics.image import psnr, ssim
    from .visual import save_image

    nfe, solver = 5, "euler"
    if shapes_adasde_path(nfe, solver).name not in available_shapes_adasde():
        print(f"skipped AdaSDE part: no shipped coefficients {shapes_adasde_path(nfe, solver)}", flush=True)
        return None
    pipe = load_shapes_pipeline()
    pipe.set_progress_bar_config(disable=True)
    prompts = eval_prompts(4 if quick else 16)
    images, seconds = _alternate_schedulers(pipe, {
        "baseline": (pipe.scheduler, lambda: generate(pipe, prompts, seed=0, num_inference_steps=DEFAULT_STEPS)),
        "adasde": (shapes_adasde_scheduler(pipe, nfe=nfe, solver=solver),
                   lambda: generate(pipe, prompts, seed=0, num_inference_steps=nfe)),
    }, repeats=1 if quick else 3)
    base, fast = images["baseline"], images["adasde"]
    grid = torch.cat([torch.cat(list(base[:8]), dim=-1), torch.cat(list(fast[:8]), dim=-1)], dim=-2)
    path = save_image(grid, out_dir / "shapes_baseline_top_adasde_bottom.png")
    return DemoRow(
        part=f"bundled shapes model, AdaSDE (learned churn + Euler, {nfe} calls) vs {DEFAULT_STEPS} Euler steps",
        steps=nfe,
        calls_computed=nfe,
        baseline_s=seconds["baseline"],
        sada_s=seconds["adasde"],
        fidelity={
            "psnr_db": psnr(fast, base),
            "ssim": ssim(fast, base),
            "adherence_baseline": prompt_adherence(base, prompts).all_correct,
            "adherence_adasde": prompt_adherence(fast, prompts).all_correct,
        },
        outputs=[str(path)],
    )


def bundled_notes_adasde_part(out_dir: Path, quick: bool) -> DemoRow | None:
    """AdaSDE on the notes model: NOTES_DEMO_NFE calls with the shipped coefficients against
    the default 50 DDIM steps (alternating runs, medians), WAVs of both and the spectrograms."""
    from .audio_io import write_wav
    from .bench.runner import ForwardCounter
    from .bundled import notes
    from .bundled.notes_adasde import available_notes_adasde, notes_adasde_path, notes_adasde_scheduler
    from .metrics.audio import log_mel_psnr, spectrogram_psnr
    from .visual import save_image

    nfe, solver = NOTES_DEMO_NFE, NOTES_DEMO_SOLVER
    if notes_adasde_path(nfe, solver).name not in available_notes_adasde():
        print(f"skipped notes AdaSDE part: no shipped coefficients {notes_adasde_path(nfe, solver)}", flush=True)
        return None
    pipe = notes.load_notes_pipeline()
    prompts = notes.eval_prompts()[: 4 if quick else 8]
    adasde = notes_adasde_scheduler(pipe, nfe=nfe, solver=solver)
    counter, calls = ForwardCounter(pipe.unet), {"fast": 0}

    def fast_run() -> tuple[torch.Tensor, torch.Tensor]:
        counter.count = 0
        out = notes.generate_notes_and_mels(pipe, prompts, 0, nfe, batch_size=len(prompts))
        calls["fast"] = counter.count  # UNet calls of one pipeline call (one batch): measured
        return out

    try:
        outputs, seconds = _alternate_schedulers(pipe, {
            "baseline": (pipe.scheduler, lambda: notes.generate_notes_and_mels(pipe, prompts, 0, batch_size=len(prompts))),
            "adasde": (adasde, fast_run),
        }, repeats=1 if quick else 2)
    finally:
        counter.close()
    (base, base_mels), (fast, fast_mels) = outputs["baseline"], outputs["adasde"]
    rate = notes.SAMPLE_RATE
    paths = write_wav(out_dir / "notes_baseline_ddim50.wav", base, rate)
    paths += write_wav(out_dir / f"notes_adasde_{solver}_nfe{nfe}.wav", fast, rate)
    picture = notes.spectrogram_picture([base[:8], fast[:8]])
    paths.append(save_image(picture, out_dir / "notes_spectrograms_baseline_top_adasde_bottom.png"))
    base_adh, fast_adh = notes.pitch_adherence(base, prompts, base_mels), notes.pitch_adherence(fast, prompts, fast_mels)
    form = "AdaSDE" if solver == "adasde" else f"learned churn + {solver.capitalize()}"
    return DemoRow(
        part=f"bundled notes model, AdaSDE ({form}, {nfe} calls) vs {notes.DEFAULT_STEPS} DDIM steps",
        steps=nfe,
        calls_computed=calls["fast"],
        baseline_s=seconds["baseline"],
        sada_s=seconds["adasde"],
        fidelity={
            "log_mel_psnr_db": log_mel_psnr(fast, base, rate),
            "generated_mel_psnr_db": spectrogram_psnr(fast_mels, base_mels),
            "pitch_adherence_baseline": base_adh.pitch,
            "pitch_adherence_adasde": fast_adh.pitch,
            "timbre_adherence_baseline": base_adh.timbre,
            "timbre_adherence_adasde": fast_adh.timbre,
        },
        outputs=[str(p) for p in paths],
    )


def bundled_notes_part(out_dir: Path, quick: bool) -> DemoRow:
    """The bundled trained notes model (MusicLDM architecture, 1.28 s at 16 kHz): WAVs and a
    spectrogram picture (rows: baseline, SADA), pitch and timbre adherence of the audio
    measured by DSP."""
    from .audio_io import write_wav
    from .bundled import notes
    from .visual import save_image

    pipe = notes.load_notes_pipeline()
    steps = 30 if quick else notes.DEFAULT_STEPS
    # 8 of the 16 prompts and 2 repeats keep this part to 1-2 minutes; the full table is
    # `scripts/train_notes.py --stage bench` (docs/bundled_models.md)
    cmp = notes.compare_notes_sada(pipe, None, "default", n_prompts=4 if quick else 8,
                                   repeats=1 if quick else 2, num_inference_steps=steps)
    rate = notes.SAMPLE_RATE
    paths = write_wav(out_dir / "notes_baseline.wav", cmp.baseline_audio, rate)
    paths += write_wav(out_dir / "notes_sada.wav", cmp.sada_audio, rate)
    picture = notes.spectrogram_picture([cmp.baseline_audio[:8], cmp.sada_audio[:8]])
    paths.append(save_image(picture, out_dir / "notes_spectrograms_baseline_top_sada_bottom.png"))
    row = cmp.row()
    return DemoRow(
        part="bundled trained notes model (MusicLDM architecture, 1.28 s)",
        steps=steps,
        calls_computed=row["network_calls"],
        baseline_s=row["baseline_s"],
        sada_s=row["sada_s"],
        fidelity={
            "log_mel_psnr_db": row["log_mel_psnr_db"],
            "generated_mel_psnr_db": row["generated_mel_psnr_db"],
            "pitch_adherence_baseline": row["baseline_adherence"]["pitch"],
            "pitch_adherence_sada": row["sada_adherence"]["pitch"],
            "timbre_adherence_baseline": row["baseline_adherence"]["timbre"],
            "timbre_adherence_sada": row["sada_adherence"]["timbre"],
        },
        outputs=[str(p) for p in paths],
    )


def print_table(rows: list[DemoRow]) -> None:
    print("| part | steps | calls computed | baseline s | accelerated s | speed-up | fidelity vs baseline |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        fid = ", ".join(f"{k} {v:.3g}" if v is not None else f"{k} n/a" for k, v in r.fidelity.items())
        print(f"| {r.part} | {r.steps} | {r.calls_computed} | {r.baseline_s:.2f} | {r.sada_s:.2f} | {r.speedup:.2f}x | {fid} |")


def run_demo(out_dir: Path, quick: bool = False) -> list[DemoRow]:
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    parts = [bundled_part, bundled_adasde_part, bundled_notes_part, bundled_notes_adasde_part, testbed_part, image_part, audio_part]
    rows = []
    for part in parts:
        row = part(out_dir, quick)
        if row is None:
            continue
        rows.append(row)
        print(f"done: {row.part}: {row.speedup:.2f}x", flush=True)
    print()
    print_table(rows)
    summary = [dict(asdict(r), speedup=r.speedup) for r in rows]
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\noutputs written to {out_dir}/")
    return rows
