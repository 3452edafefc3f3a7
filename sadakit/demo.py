"""The main job: baseline vs SADA (and AdaSDE where coefficients are shipped) on the bundled pipelines.

Each part runs the unaccelerated pipeline and the accelerated one on the same inputs
(alternating, medians of the wall times) under its own progress bar, and writes its outputs
with the numbers drawn on the comparison pictures. At the end: the table (machine-independent
columns first, :mod:`sadakit.demo_table`) and ``summary.md``, a few lines to paste into an issue.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Protocol

import torch

from .demo_table import DemoRow, fidelity_parts, picture_caption, speedup_text, summary_markdown, versions  # noqa: F401 (DemoRow: re-exported)
from .bench.harness import Measured, baseline_vs_sada, compare
from .bench.methods import AdaSDE, Baseline
from .quiet import quiet

#: The shipped notes coefficients the demo runs (docs/adasde.md, "notes model", says why these).
NOTES_DEMO_NFE = 5
#: None: the shipped file measured best at the NFE (``BundledAdaSDE.best``), as for the shapes part
NOTES_DEMO_SOLVER: str | None = None


class Progress(Protocol):
    """What a part reports to its bar: how many generations it will run, and each one done."""

    def expect(self, total: int) -> None: ...

    def tick(self, what: str = "") -> None: ...


class _NoProgress:
    """For parts called directly (tests, scripts): no bar."""

    def expect(self, total: int) -> None:
        pass

    def tick(self, what: str = "") -> None:
        pass


class _PartBar:
    """One tqdm bar per part, one tick per generation; it ends on the part's result. Without a
    terminal (logs, CI) there is no bar to redraw: just the result line."""

    def __init__(self, description: str) -> None:
        from tqdm.auto import tqdm

        self.description, self.started = description, time.perf_counter()
        self.live = sys.stderr.isatty()
        self.bar = tqdm(total=None, desc=description, unit="run", leave=True, disable=not self.live,
                        bar_format="{desc} {bar:10} {n_fmt}/{total_fmt} [{elapsed}]{postfix}")

    def expect(self, total: int) -> None:
        self.bar.total = total
        self.bar.refresh()

    def tick(self, what: str = "") -> None:
        self.bar.set_postfix_str(what, refresh=False)
        self.bar.update(1)

    def finish(self, result: str) -> None:
        if self.live:
            self.bar.set_postfix_str(result, refresh=False)
            self.bar.close()
        else:
            minutes, seconds = divmod(round(time.perf_counter() - self.started), 60)
            print(f"{self.description}: {result} [{minutes:02d}:{seconds:02d}]", flush=True)


def _quiet_pipe(pipe: Any) -> Any:
    """Only the demo's bars show: the pipeline's own per-generation bar goes."""
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    return pipe


def _row(part: str, method: str, steps: int, base: Measured, fast: Measured, fidelity: dict, **fields: Any) -> DemoRow:
    """A demo row from the harness's two sides; calls and FLOPs from SADA's report unless given."""
    report = fast.report
    fields.setdefault("calls_computed", report.get("network_calls"))
    fields.setdefault("baseline_calls", report.get("denoiser_calls"))
    fields.setdefault("flops_ratio", report.get("flops_ratio"))
    return DemoRow(part=part, method=method, steps=steps, baseline_s=base.median_s, sada_s=fast.median_s,
                   fidelity=fidelity, baseline_times=list(base.times), sada_times=list(fast.times), **fields)


def _comparison_row(part: str, method: str, cmp: Any, fidelity: dict) -> DemoRow:
    """A demo row from a bundled model's :class:`~sadakit.bundled.comparison.Comparison`."""
    return DemoRow(part=part, method=method, steps=cmp.steps, calls_computed=cmp.network_calls,
                   baseline_calls=cmp.denoiser_calls, flops_ratio=cmp.flops_ratio, baseline_s=cmp.baseline_s,
                   sada_s=cmp.sada_s, fidelity=fidelity, baseline_times=list(cmp.baseline_times),
                   sada_times=list(cmp.sada_times))


def image_part(out_dir: Path, quick: bool, progress: Progress | None = None) -> DemoRow:
    from .bench.scorers import image_fidelity
    from .testing import tiny_sdxl_pipeline
    from .visual import comparison_row, save_image, save_labelled

    progress = progress or _NoProgress()
    size = "tiny" if quick else "medium"
    side = 64 if quick else 256
    steps = 20 if quick else 50
    repeats = 1 if quick else 2
    progress.expect(2 + 2 * repeats)
    pipe = _quiet_pipe(tiny_sdxl_pipeline(size=size))

    def make_kwargs() -> dict:
        return {"prompt": "a red square on the left", "num_inference_steps": steps, "height": side, "width": side,
                "output_type": "pt", "generator": torch.Generator().manual_seed(0)}

    base, fast = baseline_vs_sada(pipe, lambda kwargs: pipe(**kwargs).images, make_kwargs, repeats=repeats,
                                  on_run=progress.tick)
    row = _row(f"SDXL ({size}, random weights) {side}x{side}", f"SADA, {steps} Euler steps", steps, base, fast,
               image_fidelity(fast.output, base.output, lpips=False))
    paths = [save_image(base.output[0], out_dir / "sdxl_baseline.png"), save_image(fast.output[0], out_dir / "sdxl_sada.png")]
    paths.append(save_labelled(comparison_row(base.output[0], fast.output[0]), out_dir / "sdxl_comparison.png",
                               columns=["baseline", "SADA", "|difference| x8"], caption=picture_caption(row)))
    row.outputs = [str(p) for p in paths]
    return row


def testbed_part(out_dir: Path, quick: bool, progress: Progress | None = None) -> DemoRow:
    """The analytic testbed: exact denoiser, so the fidelity numbers mean something."""
    from .testbeds.solvers import make_pipeline

    progress = progress or _NoProgress()
    steps = 30 if quick else 50
    repeats = 1 if quick else 3
    progress.expect(2 + 2 * repeats + 1)
    pipe = make_pipeline("latent-4x16x16", "dpm++2m")
    z = torch.randn(32 if quick else 128, *pipe.testbed.mixture.data_shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    base, fast = baseline_vs_sada(pipe, lambda kwargs: pipe(latents=z, **kwargs).samples,
                                  lambda: {"num_inference_steps": steps}, repeats=repeats, on_run=progress.tick)
    rep = fast.report
    fewer_steps = rep["network_calls"]
    fewer = pipe(num_inference_steps=fewer_steps, latents=z).samples
    progress.tick(f"{fewer_steps} plain steps")

    def rmse(a, b):
        return float((a - b).reshape(a.shape[0], -1).pow(2).mean(1).sqrt().median())

    summary = out_dir / "testbed.json"
    summary.write_text(json.dumps({"steps": steps, "sada_calls": rep["network_calls"], "decisions": rep["decisions"]}))
    return _row(
        "Gaussian-mixture testbed, 1024-d, exact denoiser", f"SADA, {steps} DPM-Solver++ steps", steps, base, fast,
        {"rmse_to_baseline": rmse(fast.output, base.output), f"fewer_steps_{fewer_steps}_rmse": rmse(fewer, base.output)},
        outputs=[str(summary)],
        wall_note="not the result: the exact denoiser costs ~2 ms/call, so this is sadakit's own overhead",
    )


def audio_part(out_dir: Path, quick: bool, progress: Progress | None = None) -> DemoRow:
    from .audio_io import pipeline_sample_rate, write_wav
    from .bundled.notes import spectrogram_picture
    from .metrics.audio import log_mel_psnr, log_spectral_distance
    from .plugins.audio import fix_musicldm
    from .testing import tiny_musicldm_pipeline
    from .visual import save_labelled

    progress = progress or _NoProgress()
    size = "tiny" if quick else "medium"
    seconds = 0.64 if quick else 5.12
    steps = 20 if quick else 50
    repeats = 1 if quick else 2
    progress.expect(2 + 2 * repeats)
    pipe = _quiet_pipe(tiny_musicldm_pipeline(size=size))
    fix_musicldm(pipe)  # transformers 5 vs diffusers' MusicLDM, see README

    def make_kwargs() -> dict:
        return {"prompt": "a calm piano note", "num_inference_steps": steps, "audio_length_in_s": seconds,
                "generator": torch.Generator().manual_seed(0), "output_type": "np"}

    base, fast = baseline_vs_sada(pipe, lambda kwargs: pipe(**kwargs).audios, make_kwargs, repeats=repeats,
                                  on_run=progress.tick)
    rate = pipeline_sample_rate(pipe)
    row = _row(f"MusicLDM ({size}, random weights) {seconds:g} s", f"SADA, {steps} DDIM steps", steps, base, fast,
               {"log_mel_psnr_db": log_mel_psnr(fast.output, base.output, rate),
                "lsd_db": log_spectral_distance(fast.output, base.output, rate)})
    paths = write_wav(out_dir / "musicldm_baseline.wav", base.output, rate)
    paths += write_wav(out_dir / "musicldm_sada.wav", fast.output, rate)
    clips = [torch.as_tensor(a).reshape(len(a), -1) for a in (base.output, fast.output)]
    paths.append(save_labelled(
        spectrogram_picture(clips), out_dir / "musicldm_spectrograms_baseline_top_sada_bottom.png",
        rows=["baseline", "SADA"], caption=picture_caption(row, about="log-mel spectrogram (time to the right, pitch up)"),
    ))
    row.outputs = [str(p) for p in paths]
    return row


def bundled_part(out_dir: Path, quick: bool, progress: Progress | None = None) -> DemoRow:
    """The bundled trained shapes model (real trajectories, ~13 MB of weights in the package)."""
    from .bundled import shapes

    steps = 30 if quick else 50
    return _bundled_image_part(shapes, "shapes model (trained, SD architecture, 32x32)", f"SADA, {steps} Euler steps",
                               steps, out_dir / "shapes_baseline_top_sada_bottom.png", quick, progress)


def bundled_dit_part(out_dir: Path, quick: bool, progress: Progress | None = None) -> DemoRow:
    """The bundled trained Flux model (``bundled:shapes-dit``, same data and judge as the shapes
    model): SADA on a DiT with true CFG (two transformer calls per step) on learned weights."""
    from .bundled import shapes_dit

    steps = shapes_dit.DEFAULT_STEPS
    return _bundled_image_part(shapes_dit, "shapes-dit model (trained, Flux architecture, 32x32)",
                               f"SADA, {steps} flow-matching Euler steps", steps,
                               out_dir / "shapes_dit_baseline_top_sada_bottom.png", quick, progress)


def _bundled_image_part(model: Any, part: str, method: str, steps: int, picture: Path, quick: bool,
                        progress: Progress | None) -> DemoRow:
    """Baseline vs SADA on a bundled image model (its ``compare``), with the labelled picture."""
    from .visual import save_labelled

    progress = progress or _NoProgress()
    repeats = 1 if quick else 3
    progress.expect(2 + 2 * repeats)
    pipe = _quiet_pipe(model.load_pipeline())
    cmp = model.compare(pipe, None, "default", n_prompts=4 if quick else 16, repeats=repeats,
                        num_inference_steps=steps, on_run=progress.tick)
    result = _comparison_row(part, method, cmp, {
        "psnr_db": cmp.fidelity["psnr_db"],
        "ssim": cmp.fidelity["ssim"],
        "adherence_baseline": cmp.baseline_adherence.all_correct,
        "adherence_sada": cmp.sada_adherence.all_correct,
    })
    path = save_labelled(
        _two_rows(cmp.baseline_output, cmp.sada_output), picture,
        rows=[f"baseline, {steps} steps", "SADA"],
        caption=picture_caption(result, about="one prompt per column, same seed in both rows"),
    )
    result.outputs = [str(path)]
    return result


def bundled_video_part(out_dir: Path, quick: bool, progress: Progress | None = None) -> DemoRow:
    """The bundled trained Wan model (``bundled:moving-shapes``, 9 frames of 32x32): SADA on a
    video DiT with CFG on learned weights; an MP4 (a GIF without an encoder) with the baseline
    clips above SADA's, and a frame strip (rows: each prompt's baseline and SADA clip)."""
    from .bundled import moving_shapes
    from .video_io import write_video
    from .visual import save_labelled

    progress = progress or _NoProgress()
    steps = moving_shapes.DEFAULT_STEPS
    repeats = 1 if quick else 3
    progress.expect(2 + 2 * repeats)
    pipe = _quiet_pipe(moving_shapes.load_pipeline())
    cmp = moving_shapes.compare(pipe, None, "default", n_prompts=4 if quick else 16, repeats=repeats,
                                num_inference_steps=steps, on_run=progress.tick)
    result = _comparison_row("moving-shapes model (trained, Wan architecture, 9x32x32)",
                             f"SADA, {steps} UniPC steps", cmp, {
        "psnr_db": cmp.fidelity["psnr_db"],
        "temporal_psnr_db": cmp.fidelity["temporal_psnr_db"],
        "adherence_baseline": cmp.baseline_adherence.all_correct,
        "adherence_sada": cmp.sada_adherence.all_correct,
    })
    shown = 4
    grid = torch.cat([torch.cat(list(side[:shown].transpose(0, 1)), dim=-1)  # (frames, 3, H, shown * W)
                      for side in (cmp.baseline_output, cmp.sada_output)], dim=-2)
    grid = torch.nn.functional.interpolate(grid, scale_factor=4, mode="nearest")  # 32 px clips are tiny on screen
    video, note = write_video(grid.permute(0, 2, 3, 1).numpy(), out_dir / "moving_shapes_baseline_top_sada_bottom.mp4",
                              fps=4)
    if note:
        print(note, flush=True)
    strip_rows, names = [], []
    for i, prompt in enumerate(cmp.prompts[:shown]):
        for label, side in (("baseline", cmp.baseline_output), ("SADA", cmp.sada_output)):
            strip_rows.append(torch.cat(list(side[i]), dim=-1))  # the clip's frames left to right
            names.append(f"{label}: {prompt}")
    strip = save_labelled(
        torch.cat(strip_rows, dim=-2), out_dir / "moving_shapes_frames_baseline_vs_sada.png", rows=names,
        columns=[f"frame {f}" for f in range(cmp.baseline_output.shape[1])],
        caption=picture_caption(result, about="each clip's frames left to right, baseline above SADA"),
    )
    result.outputs = [str(video), str(strip)]
    return result


def _two_rows(top: torch.Tensor, bottom: torch.Tensor, n: int = 8) -> torch.Tensor:
    """The first ``n`` images of each batch side by side, ``top`` above ``bottom``."""
    return torch.cat([torch.cat(list(top[:n]), dim=-1), torch.cat(list(bottom[:n]), dim=-1)], dim=-2)


def adasde_form_label(spec: Any, nfe: int, solver: str | None) -> str:
    """How a shipped file's form is named in the demo table ("learned multistep", "learned churn + Euler", ...)."""
    form, deterministic, learned_grid = spec.resolve(nfe, solver, None, None)
    if form == "adasde":
        return "AdaSDE's step"
    name = "learned multistep" if form == "multistep" else form.capitalize()
    if form != "multistep" and not deterministic:
        name = f"learned churn + {name}"
    return name + (", learned grid" if learned_grid else "")


def _baseline_vs_adasde(pipe: Any, model: Any, prompts: list[str], nfe: int, solver: str, repeats: int,
                        progress: Progress, generate: Callable[[int], Any]) -> tuple[Measured, Measured]:
    """The model's default steps against its shipped AdaSDE coefficients (``nfe`` calls), through the
    harness; no warm-up, so each side runs ``repeats`` times (the files' schedules need none)."""
    adasde = AdaSDE(name="adasde")
    adasde.scheduler = model.adasde_scheduler(pipe, nfe=nfe, solver=solver)
    results = compare(pipe, lambda kwargs: generate(kwargs["num_inference_steps"]), [Baseline(name="baseline"), adasde],
                      lambda: {"num_inference_steps": model.DEFAULT_STEPS}, repeats, warmups=0, on_run=progress.tick)
    return results["baseline"], results["adasde"]


def bundled_adasde_part(out_dir: Path, quick: bool, progress: Progress | None = None) -> DemoRow | None:
    """AdaSDE on the shapes model: 5 calls with the shipped file measured best at NFE 5 against the
    default 50 Euler steps (alternating runs, medians)."""
    from .bench.scorers import image_fidelity
    from .bundled import shapes
    from .visual import save_labelled

    from .bundled.adasde_files import SHAPES

    progress = progress or _NoProgress()
    nfe, solver = 5, None  # the shipped file measured best at NFE 5
    if shapes.adasde_path(nfe, solver).name not in shapes.available_adasde():
        print(f"skipped AdaSDE part: no shipped coefficients {shapes.adasde_path(nfe, solver)}", flush=True)
        return None
    repeats = 1 if quick else 3
    progress.expect(2 * repeats)
    pipe = _quiet_pipe(shapes.load_pipeline())
    prompts = shapes.eval_prompts(4 if quick else 16)
    base, fast = _baseline_vs_adasde(pipe, shapes, prompts, nfe, solver, repeats, progress,
                                     lambda steps: shapes.generate(pipe, prompts, seed=0, num_inference_steps=steps))
    row = _row(
        "shapes model (trained, SD architecture, 32x32)",
        f"AdaSDE: {adasde_form_label(SHAPES, nfe, solver)}, {nfe} calls vs {shapes.DEFAULT_STEPS} Euler steps", nfe,
        base, fast,
        {**image_fidelity(fast.output, base.output, lpips=False),
         "adherence_baseline": shapes.adherence(base.output, prompts).all_correct,
         "adherence_adasde": shapes.adherence(fast.output, prompts).all_correct},
        # the same UNet on the same batch every call: FLOPs go with the calls
        calls_computed=fast.forwards, baseline_calls=base.forwards, flops_ratio=fast.forwards / base.forwards,
    )
    path = save_labelled(
        _two_rows(base.output, fast.output), out_dir / "shapes_baseline_top_adasde_bottom.png",
        rows=[f"baseline, {shapes.DEFAULT_STEPS} steps", f"AdaSDE, {nfe} calls"],
        caption=picture_caption(row, about="one prompt per column, same seed in both rows"),
    )
    row.outputs = [str(path)]
    return row


def bundled_notes_adasde_part(out_dir: Path, quick: bool, progress: Progress | None = None) -> DemoRow | None:
    """AdaSDE on the notes model: NOTES_DEMO_NFE calls with the shipped coefficients against
    the default 50 DDIM steps (alternating runs, medians), WAVs of both and the spectrograms."""
    from .audio_io import write_wav
    from .bundled import notes
    from .metrics.audio import log_mel_psnr, spectrogram_psnr
    from .visual import save_labelled

    progress = progress or _NoProgress()
    nfe, solver = NOTES_DEMO_NFE, NOTES_DEMO_SOLVER
    if notes.adasde_path(nfe, solver).name not in notes.available_adasde():
        print(f"skipped notes AdaSDE part: no shipped coefficients {notes.adasde_path(nfe, solver)}", flush=True)
        return None
    repeats = 1 if quick else 2
    progress.expect(2 * repeats)
    pipe = _quiet_pipe(notes.load_pipeline())
    prompts = notes.eval_prompts(4 if quick else 8)
    # one pipeline call (one batch) per generation, so the counted calls are one generation's
    base, fast = _baseline_vs_adasde(pipe, notes, prompts, nfe, solver, repeats, progress,
                                     lambda steps: notes.generate_with_mels(pipe, prompts, 0, steps, batch_size=len(prompts)))
    (base_audio, base_mels), (fast_audio, fast_mels) = base.output, fast.output
    rate = notes.SAMPLE_RATE
    base_adh, fast_adh = notes.adherence(base_audio, prompts, base_mels), notes.adherence(fast_audio, prompts, fast_mels)
    from .bundled.adasde_files import NOTES

    form = adasde_form_label(NOTES, nfe, solver)
    row = _row(
        "notes model (trained, MusicLDM architecture, 1.28 s)",
        f"AdaSDE: {form}, {nfe} calls vs {notes.DEFAULT_STEPS} DDIM steps", nfe, base, fast,
        {"log_mel_psnr_db": log_mel_psnr(fast_audio, base_audio, rate),
         "generated_mel_psnr_db": spectrogram_psnr(fast_mels, base_mels),
         "pitch_adherence_baseline": base_adh.pitch, "pitch_adherence_adasde": fast_adh.pitch,
         "timbre_adherence_baseline": base_adh.timbre, "timbre_adherence_adasde": fast_adh.timbre},
        calls_computed=fast.forwards, baseline_calls=base.forwards, flops_ratio=fast.forwards / base.forwards,
    )
    paths = write_wav(out_dir / "notes_baseline_ddim50.wav", base_audio, rate)
    paths += write_wav(out_dir / f"notes_adasde_{NOTES.resolve(nfe, solver, None, None)[0]}_nfe{nfe}.wav", fast_audio, rate)
    paths.append(save_labelled(
        notes.spectrogram_picture([base_audio[:8], fast_audio[:8]]), out_dir / "notes_spectrograms_baseline_top_adasde_bottom.png",
        rows=[f"baseline, DDIM {notes.DEFAULT_STEPS}", f"AdaSDE, {nfe} calls"],
        caption=picture_caption(row, about="log-mel spectrograms, one prompt per column (time to the right, pitch up)"),
    ))
    row.outputs = [str(p) for p in paths]
    return row


def bundled_notes_part(out_dir: Path, quick: bool, progress: Progress | None = None) -> DemoRow:
    """The bundled trained notes model (MusicLDM architecture, 1.28 s at 16 kHz): WAVs and a
    spectrogram picture (rows: baseline, SADA), pitch and timbre adherence of the audio
    measured by DSP."""
    from .audio_io import write_wav
    from .bundled import notes
    from .visual import save_labelled

    progress = progress or _NoProgress()
    steps = 30 if quick else notes.DEFAULT_STEPS
    repeats = 1 if quick else 2
    progress.expect(2 + 2 * repeats)
    pipe = _quiet_pipe(notes.load_pipeline())
    # 8 of the 16 prompts and 2 repeats keep this part to 1-2 minutes; the full table is
    # `scripts/train_notes.py --stage bench` (docs/bundled_models.md)
    cmp = notes.compare(pipe, None, "default", n_prompts=4 if quick else 8,
                        repeats=repeats, num_inference_steps=steps, on_run=progress.tick)
    rate = notes.SAMPLE_RATE
    result = _comparison_row("notes model (trained, MusicLDM architecture, 1.28 s)", f"SADA, {steps} DDIM steps", cmp, {
        "log_mel_psnr_db": cmp.fidelity["log_mel_psnr_db"],
        "generated_mel_psnr_db": cmp.fidelity["generated_mel_psnr_db"],
        "pitch_adherence_baseline": cmp.baseline_adherence.pitch,
        "pitch_adherence_sada": cmp.sada_adherence.pitch,
        "timbre_adherence_baseline": cmp.baseline_adherence.timbre,
        "timbre_adherence_sada": cmp.sada_adherence.timbre,
    })
    paths = write_wav(out_dir / "notes_baseline.wav", cmp.baseline_output, rate)
    paths += write_wav(out_dir / "notes_sada.wav", cmp.sada_output, rate)
    paths.append(save_labelled(
        notes.spectrogram_picture([cmp.baseline_output[:8], cmp.sada_output[:8]]),
        out_dir / "notes_spectrograms_baseline_top_sada_bottom.png",
        rows=[f"baseline, DDIM {steps}", "SADA"],
        caption=picture_caption(result, about="log-mel spectrograms, one prompt per column (time to the right, pitch up)"),
    ))
    result.outputs = [str(p) for p in paths]
    return result


#: The parts in the order they run: the trained bundled models first (their numbers mean most).
PARTS: tuple[Callable[..., DemoRow | None], ...] = (
    bundled_part, bundled_adasde_part, bundled_dit_part, bundled_video_part, bundled_notes_part,
    bundled_notes_adasde_part, testbed_part, image_part, audio_part,
)

#: Bar titles (the row's own part/method names are known only after the part ran).
_TITLES = {
    bundled_part: "shapes model, SADA", bundled_adasde_part: "shapes model, AdaSDE",
    bundled_dit_part: "shapes-dit model (Flux), SADA", bundled_video_part: "moving-shapes model (Wan), SADA",
    bundled_notes_part: "notes model, SADA", bundled_notes_adasde_part: "notes model, AdaSDE",
    testbed_part: "Gaussian-mixture testbed, SADA", image_part: "SDXL random weights, SADA",
    audio_part: "MusicLDM random weights, SADA",
}


def _bar_result(row: DemoRow | None) -> str:
    if row is None:
        return "skipped"
    wall = speedup_text(row.wall_ratios, runs=False)  # short: the table has the run counts
    cells = [f"{row.calls_computed}/{row.total_calls} calls"] + fidelity_parts(row.fidelity)[:1] + [wall]
    if row.machine_busy:
        cells.append("machine busy")
    return ", ".join(cells)


def run_demo(out_dir: Path, quick: bool = False, parts: tuple[Callable[..., DemoRow | None], ...] = PARTS) -> list[DemoRow]:
    """Run ``parts``, print the table and the summary, write ``summary.md`` and ``summary.json``."""
    with quiet():
        return _run_parts(out_dir, quick, parts)


def _run_parts(out_dir: Path, quick: bool, parts: tuple[Callable[..., DemoRow | None], ...]) -> list[DemoRow]:
    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    rows = []
    for i, part in enumerate(parts, 1):
        bar = _PartBar(f"[{i}/{len(parts)}] {_TITLES.get(part, part.__name__)}")
        row = None
        try:
            row = part(out_dir, quick, bar)
        finally:
            bar.finish(_bar_result(row))
        if row is not None:
            rows.append(row)
    summary = summary_markdown(rows, time.perf_counter() - started, versions())
    (out_dir / "summary.md").write_text(summary)
    records = [dict(asdict(r), speedup=r.speedup, wall_ratios=r.wall_ratios, machine_busy=r.machine_busy) for r in rows]
    (out_dir / "summary.json").write_text(json.dumps(records, indent=2))
    print()
    print(summary)
    print(f"outputs written to {out_dir}/ (this summary: {out_dir / 'summary.md'})")
    return rows
