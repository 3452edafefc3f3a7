"""Run the baseline and every method on the same inputs; time, count, and compare outputs.

The protocol per case is the harness's (:mod:`sadakit.bench.harness`: one warm-up, interleaved
repeats, medians; FLOPs and peak memory from one separate generation; a method that does not
restore the pipeline stops the bench with :class:`PipelineNotRestoredError`). Fidelity is the
scorer of the pipeline's kind of output (:mod:`sadakit.bench.scorers`), plus the bundled model's
judge where one exists.
Cases (prompt x seed) are sharded over processes with ``accelerate`` and gathered on the
main process; a run interrupted with Ctrl-C keeps what it has gathered so far.
"""

from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch

from ..registry import family_of, output_kind_of
from .harness import compare, denoiser_device
from .memory import MEMORY_METHODS, memory_method
from .methods import Method, expand_specs, parse_method
from .restoration import PipelineNotRestoredError  # noqa: F401 (part of the bench's API)
from .scorers import LPIPS_NOTICE, Judge, fidelity_for


@dataclass
class Case:
    index: int
    prompt: str
    seed: int


@dataclass
class CaseResult:
    """One method on one case."""

    case: int
    prompt: str
    seed: int
    method: str
    wall_s: float
    baseline_s: float
    speedup: float
    denoiser_forwards: int
    flops: float | None
    peak_mem_mb: float | None
    fidelity: dict[str, float | None] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)


@dataclass
class BenchResult:
    pipeline: str
    steps: int
    repeats: int
    processes: int
    cases: list[CaseResult]
    not_applicable: dict[str, str]
    interrupted: bool = False
    notices: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def call_pipeline(pipe: Any, kwargs: dict) -> torch.Tensor:
    """Run the pipeline and return its output as a float tensor (images in [0, 1] or waveforms)."""
    kind = output_kind_of(pipe)
    if kind == "audio":
        audios = pipe(**kwargs).audios
        return torch.as_tensor(audios, dtype=torch.float32)
    if kind == "video":  # (B, F, C, H, W) in [0, 1]
        return pipe(output_type="pt", **kwargs).frames.float().cpu()
    return pipe(output_type="pt", **kwargs).images.float().cpu()


#: What one generation's batch per prompt is called, by kind of output.
PER_PROMPT_ARGS = {"image": "num_images_per_prompt", "audio": "num_waveforms_per_prompt", "video": "num_videos_per_prompt"}


def per_prompt_kwargs(pipe: Any, count: int) -> dict:
    """``count`` outputs per prompt, under the argument name the pipeline's kind uses (MusicLDM:
    ``num_waveforms_per_prompt``); a pipeline whose call takes no such argument is refused."""
    if count == 1:
        return {}
    kind = output_kind_of(pipe)
    name = PER_PROMPT_ARGS[kind]
    if name not in inspect.signature(type(pipe).__call__).parameters:
        raise ValueError(f"{type(pipe).__name__} makes {kind} but its call takes no {name!r}: it makes one output "
                         f"per prompt, so --images-per-prompt must be 1 (got {count})")
    return {name: count}


def bench_case(
    pipe: Any, case: Case, methods: list[Method], base_kwargs: dict, repeats: int, notices: list[str],
    failures: dict[str, str], memory: str | None = None, scorer: Judge | None = None,
    tick: Callable[[str], None] | None = None,
) -> list[CaseResult]:
    """All methods on one (prompt, seed) through :func:`sadakit.bench.harness.compare` (warm-up,
    interleaved timing, FLOPs/memory), then fidelity against the baseline and the judge.
    ``tick(label)`` is called after every generation (progress)."""

    def kwargs_for() -> dict:
        return {**base_kwargs, "prompt": case.prompt, "generator": torch.Generator(device="cpu").manual_seed(case.seed)}

    def failed(m: Method, err: Exception) -> None:
        if m.label == "baseline":
            raise err
        failures[m.label] = f"failed on this pipeline: {type(err).__name__}: {err}"

    everyone = [parse_method("baseline")] + [m for m in methods if m.label not in failures]
    measured = compare(pipe, lambda kwargs: call_pipeline(pipe, kwargs), everyone, kwargs_for, repeats,
                       cost=True, memory=memory, on_run=tick, on_failure=failed)
    base = measured["baseline"]
    fidelity = fidelity_for(pipe)
    results = []
    for label, m in measured.items():
        scores = fidelity(m.output, base.output)
        if scores.get("lpips", 0.0) is None and LPIPS_NOTICE not in notices and output_kind_of(pipe) == "image":
            notices.append(LPIPS_NOTICE)
        if scorer is not None:
            scores.update(scorer(m.output, case.prompt))
        results.append(
            CaseResult(
                case=case.index, prompt=case.prompt, seed=case.seed, method=label, wall_s=m.median_s,
                baseline_s=base.median_s, speedup=base.median_s / m.median_s, denoiser_forwards=m.forwards,
                flops=m.flops, peak_mem_mb=m.peak_mem_mb, fidelity=scores, extra=_extra(m.report),
            )
        )
    return results


def _extra(report: dict) -> dict:
    """The part of a method's report the bench keeps in its JSON (not SADA's per-row lists)."""
    keep = ("network_calls", "denoiser_calls", "decisions", "flops_ratio", "computed_row_fraction")
    return {k: report[k] for k in keep if k in report}


def run_bench(
    pipe: Any,
    prompts: list[str],
    seeds: list[int],
    steps: int,
    methods: list[str],
    repeats: int = 3,
    call_kwargs: dict | None = None,
    adasde_file: str | None = None,
    pipeline_name: str = "",
    progress: bool = True,
    sweep: bool = False,
    scorer: Judge | None = None,
) -> BenchResult:
    """Benchmark ``methods`` against the baseline on every (prompt, seed); see the module doc.

    ``methods`` may hold knob sweeps (``fbcache:0.2,0.4``); ``sweep`` gives bare names their
    default sweep. ``scorer(images, prompt)`` adds absolute quality columns (e.g. the bundled
    model's prompt adherence), averaged over cases in the table.
    """
    from accelerate import PartialState
    from accelerate.utils import gather_object
    from tqdm.auto import tqdm

    state = PartialState(cpu=not torch.cuda.is_available())
    parsed = [parse_method(s, adasde_file) for s in expand_specs(methods, sweep=sweep)]
    not_applicable = {}
    usable = []
    call = {"num_inference_steps": steps, **(call_kwargs or {})}
    for m in parsed:
        reason = m.not_applicable(pipe) or m.not_applicable_to_call(pipe, call)
        if reason:
            not_applicable[m.label] = reason
        else:
            usable.append(m)
    cases = [Case(i, p, s) for i, (p, s) in enumerate((p, s) for p in prompts for s in seeds)]
    base_kwargs = {"num_inference_steps": steps, **(call_kwargs or {})}
    device = denoiser_device(pipe)
    memory = memory_method(device)
    notices: list[str] = [f"peak memory: {MEMORY_METHODS[memory]}"]
    failures: dict[str, str] = {}
    # untimed set-up (MagCache calibration) on the first prompt and seed, the same in every process
    for m in list(usable):
        try:
            m.prepare(pipe, {**base_kwargs, "prompt": prompts[0], "generator": torch.Generator(device="cpu").manual_seed(seeds[0])})
        except Exception as err:
            failures[m.label] = f"failed on this pipeline (set-up): {type(err).__name__}: {err}"
            usable.remove(m)
    if family_of(pipe) == "musicldm":
        from ..plugins.audio import fix_musicldm

        if fix_musicldm(pipe):  # else diffusers 0.42.1 cannot encode a prompt under transformers 5
            notices.append("MusicLDM: sadakit.plugins.audio.fix_musicldm applied (transformers 5 CLAP "
                           "text features), for the baseline and every method alike")
    if any(k.endswith("_per_prompt") and v > 1 for k, v in base_kwargs.items()) and output_kind_of(pipe) == "audio":
        import importlib.util

        if importlib.util.find_spec("librosa") is not None:
            notices.append("several waveforms per prompt: with librosa installed, audio pipelines reorder them by "
                           "CLAP score, so a method's clips may be compared with other baseline clips")
    mine: list[CaseResult] = []
    interrupted = False
    with state.split_between_processes(cases) as my_cases:
        # one step per generation: warm-up, repeats and the FLOPs/memory run of every method
        per_case = (len(usable) + 1) * (repeats + 2)
        bar = tqdm(total=len(my_cases) * per_case, desc=f"bench [{state.process_index}]", unit="gen",
                   disable=not (progress and state.is_main_process))

        def tick(label: str) -> None:
            bar.set_postfix_str(label, refresh=False)
            bar.update(1)

        try:
            for n, case in enumerate(my_cases):
                bar.set_description(f"bench [{state.process_index}] case {n + 1}/{len(my_cases)}")
                mine.extend(bench_case(pipe, case, usable, base_kwargs, repeats, notices, failures,
                                       memory=memory, scorer=scorer, tick=tick))
                bar.n = (n + 1) * per_case  # methods that failed skipped some steps
                bar.refresh()
        except KeyboardInterrupt:
            interrupted = True
        finally:
            bar.close()
    gathered = gather_object(mine) if state.num_processes > 1 else mine
    if state.num_processes > 1:
        for part in gather_object([failures]):
            failures.update(part)
    not_applicable.update(failures)
    # a method that failed on a later case must not keep the rows of its earlier cases
    gathered = [r for r in gathered if r.method not in failures]
    gathered = sorted(gathered, key=lambda r: (r.case, r.method != "baseline", r.method))
    return BenchResult(
        pipeline=pipeline_name or type(pipe).__name__, steps=steps, repeats=repeats,
        processes=state.num_processes, cases=gathered, not_applicable=not_applicable,
        interrupted=interrupted, notices=notices,
    )
