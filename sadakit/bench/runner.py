"""Run the baseline and every method on the same inputs; time, count, and compare outputs.

Timing protocol per case: each method is warmed up once, then the baseline and the methods
run in turn ``repeats`` times (interleaved, so machine noise hits all alike) and the median
wall time is kept. FLOPs come from torch's flop counter over one separate generation, peak
memory from CUDA's allocator statistics or, on CPUs, from sampling the process RSS.
Cases (prompt x seed) are sharded over processes with ``accelerate`` and gathered on the
main process; a run interrupted with Ctrl-C keeps what it has gathered so far.
"""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .methods import Method, parse_method


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


def is_audio(pipe: Any) -> bool:
    return hasattr(pipe, "vocoder")


def denoiser_of(pipe: Any) -> torch.nn.Module:
    for name in ("transformer", "unet"):
        module = getattr(pipe, name, None)
        if isinstance(module, torch.nn.Module):
            return module
    raise TypeError(f"{type(pipe).__name__} has neither a transformer nor a unet to benchmark")


class ForwardCounter:
    """Counts real denoiser forwards at its first parameterised layer (hooks that replace the
    denoiser's forward bypass module pre-hooks on the denoiser itself)."""

    def __init__(self, denoiser: torch.nn.Module) -> None:
        first = next(m for m in denoiser.modules() if len(list(m.children())) == 0 and any(True for _ in m.parameters(recurse=False)))
        self.count = 0
        self._handle = first.register_forward_pre_hook(self._hook)

    def _hook(self, *_: Any) -> None:
        self.count += 1

    def close(self) -> None:
        self._handle.remove()


class PeakMemory:
    """Peak extra memory of one run: CUDA allocator peak, or sampled process RSS on CPUs."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_mb: float | None = None

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        try:
            import psutil
        except ImportError:
            return self
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
        if self.device.type == "cuda":
            self.peak_mb = (torch.cuda.max_memory_allocated(self.device) - self._base) / 2**20
        elif hasattr(self, "_thread"):
            self._stop.set()
            self._thread.join()
            self.peak_mb = (self._peak - self._base) / 2**20


def call_pipeline(pipe: Any, kwargs: dict) -> torch.Tensor:
    """Run the pipeline and return its output as a float tensor (images in [0, 1] or waveforms)."""
    if is_audio(pipe):
        audios = pipe(**kwargs).audios
        return torch.as_tensor(audios, dtype=torch.float32)
    return pipe(output_type="pt", **kwargs).images.float().cpu()


def fidelity(pipe: Any, test: torch.Tensor, reference: torch.Tensor, notices: list[str]) -> dict[str, float | None]:
    if is_audio(pipe):
        from ..audio_io import pipeline_sample_rate
        from ..metrics.audio import audio_fidelity

        return audio_fidelity(test, reference, pipeline_sample_rate(pipe))
    from ..metrics.image import lpips, psnr, ssim

    lp = lpips(test, reference)
    if lp is None and "LPIPS not computed: its weights are not available offline" not in notices:
        notices.append("LPIPS not computed: its weights are not available offline")
    return {"psnr_db": psnr(test, reference), "ssim": ssim(test, reference), "lpips": lp}


def _timed(pipe: Any, method: Method, kwargs: dict) -> tuple[torch.Tensor, float]:
    method.apply(pipe)
    try:
        start = time.perf_counter()
        out = call_pipeline(pipe, method.call_kwargs(kwargs))
        return out, time.perf_counter() - start
    finally:
        method.remove(pipe)


def _flops_and_memory(pipe: Any, method: Method, kwargs: dict, device: torch.device) -> tuple[float | None, float | None, int, dict]:
    from torch.utils.flop_counter import FlopCounterMode

    counter = ForwardCounter(denoiser_of(pipe))
    method.apply(pipe)
    try:
        flops = FlopCounterMode(display=False)
        with flops:
            call_pipeline(pipe, method.call_kwargs(kwargs))
        forwards_flops = counter.count
        counter.count = 0
        with PeakMemory(device) as mem:
            call_pipeline(pipe, method.call_kwargs(kwargs))
        extra = method.report(pipe)
        return float(flops.get_total_flops()), mem.peak_mb, counter.count or forwards_flops, extra
    finally:
        method.remove(pipe)
        counter.close()


def bench_case(
    pipe: Any, case: Case, methods: list[Method], base_kwargs: dict, repeats: int, notices: list[str],
    failures: dict[str, str],
) -> list[CaseResult]:
    """All methods on one (prompt, seed): interleaved timing, then FLOPs/memory, then fidelity."""
    device = denoiser_of(pipe).device

    def kwargs_for() -> dict:
        return {**base_kwargs, "prompt": case.prompt, "generator": torch.Generator(device="cpu").manual_seed(case.seed)}

    everyone = [parse_method("baseline")] + methods
    outputs: dict[str, torch.Tensor] = {}
    for m in list(everyone):  # warm-up, also the output used for fidelity (runs are deterministic per seed)
        try:
            outputs[m.label], _ = _timed(pipe, m, kwargs_for())
        except Exception as err:  # a peer that breaks on this pipeline is reported, not fatal
            if m.label == "baseline":
                raise
            failures[m.label] = f"failed on this pipeline: {type(err).__name__}: {err}"
            everyone.remove(m)
    times: dict[str, list[float]] = {m.label: [] for m in everyone}
    for _ in range(repeats):
        for m in list(everyone):
            try:
                _, seconds = _timed(pipe, m, kwargs_for())
            except Exception as err:
                if m.label == "baseline":
                    raise
                failures[m.label] = f"failed on this pipeline: {type(err).__name__}: {err}"
                everyone.remove(m)
                continue
            times[m.label].append(seconds)
    base_s = statistics.median(times["baseline"])
    results = []
    for m in everyone:
        try:
            flops, peak, forwards, extra = _flops_and_memory(pipe, m, kwargs_for(), device)
        except Exception as err:
            if m.label == "baseline":
                raise
            failures[m.label] = f"failed on this pipeline: {type(err).__name__}: {err}"
            continue
        wall = statistics.median(times[m.label])
        results.append(
            CaseResult(
                case=case.index, prompt=case.prompt, seed=case.seed, method=m.label, wall_s=wall,
                baseline_s=base_s, speedup=base_s / wall, denoiser_forwards=forwards, flops=flops,
                peak_mem_mb=peak, fidelity=fidelity(pipe, outputs[m.label], outputs["baseline"], notices),
                extra=extra,
            )
        )
    return results


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
) -> BenchResult:
    """Benchmark ``methods`` against the baseline on every (prompt, seed); see the module doc."""
    from accelerate import PartialState
    from accelerate.utils import gather_object
    from tqdm.auto import tqdm

    state = PartialState(cpu=not torch.cuda.is_available())
    parsed = [parse_method(s, adasde_file) for s in methods]
    not_applicable = {}
    usable = []
    for m in parsed:
        reason = m.not_applicable(pipe)
        if reason:
            not_applicable[m.label] = reason
        else:
            usable.append(m)
    cases = [Case(i, p, s) for i, (p, s) in enumerate((p, s) for p in prompts for s in seeds)]
    base_kwargs = {"num_inference_steps": steps, **(call_kwargs or {})}
    mine: list[CaseResult] = []
    notices: list[str] = []
    failures: dict[str, str] = {}
    interrupted = False
    with state.split_between_processes(cases) as my_cases:
        bar = tqdm(my_cases, desc=f"bench [{state.process_index}]", disable=not (progress and state.is_main_process))
        try:
            for case in bar:
                mine.extend(bench_case(pipe, case, usable, base_kwargs, repeats, notices, failures))
        except KeyboardInterrupt:
            interrupted = True
    gathered = gather_object(mine) if state.num_processes > 1 else mine
    if state.num_processes > 1:
        for part in gather_object([failures]):
            failures.update(part)
    not_applicable.update(failures)
    gathered = sorted(gathered, key=lambda r: (r.case, r.method != "baseline", r.method))
    return BenchResult(
        pipeline=pipeline_name or type(pipe).__name__, steps=steps, repeats=repeats,
        processes=state.num_processes, cases=gathered, not_applicable=not_applicable,
        interrupted=interrupted, notices=notices,
    )
