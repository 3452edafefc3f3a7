"""Run the baseline and every method on the same inputs; time, count, and compare outputs.

Timing protocol per case: each method is warmed up once, then the baseline and the methods
run in turn ``repeats`` times (interleaved, so machine noise hits all alike) and the median
wall time is kept. FLOPs come from torch's flop counter over one separate generation; peak
memory is described in :class:`PeakMemory`. After every removal the pipeline's modules are
compared with their state before the bench (:func:`pipeline_fingerprint`): a method that leaves
hooks, instance forwards or reordered children behind stops the bench with
:class:`PipelineNotRestoredError`, because it would silently change every method measured after it.
Cases (prompt x seed) are sharded over processes with ``accelerate`` and gathered on the
main process; a run interrupted with Ctrl-C keeps what it has gathered so far.
"""

from __future__ import annotations

import re
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch

from ..registry import output_kind_of

from .methods import Method, expand_specs, parse_method


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
    return output_kind_of(pipe) == "audio"


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


DENOISING_COMPONENTS = ("unet", "transformer", "controlnet")


def pipeline_fingerprint(pipe: Any) -> tuple:
    """What a method must leave as it found it: every module of the denoising components in order, with
    foreign instance-level forwards, torch hooks and diffusers hooks, plus the scheduler object.
    (An instance ``forward`` that is the module's own class forward counts as none. Text
    encoders are left out: transformers installs its output-recording hooks lazily.)"""
    parts: list[Any] = [id(getattr(pipe, "scheduler", None))]
    for component_name in DENOISING_COMPONENTS:
        component = getattr(pipe, component_name, None)
        if not isinstance(component, torch.nn.Module):
            continue
        for name, module in component.named_modules():
            registry = module.__dict__.get("_diffusers_hook")
            parts.append((
                component_name, name, id(module), _foreign_forward(module),
                len(module._forward_hooks), len(module._forward_pre_hooks),
                tuple(registry.hooks) if registry is not None else (),
            ))
    return tuple(parts)


def _foreign_forward(module: torch.nn.Module) -> bool:
    bound = module.__dict__.get("forward")
    if bound is None:
        return False
    return not (getattr(bound, "__func__", None) is type(module).forward and getattr(bound, "__self__", None) is module)


def _fingerprint_diff(before: tuple, after: tuple) -> str:
    """A short human description of the first difference between two fingerprints."""
    if before[0] != after[0]:
        return "the scheduler was replaced"
    for a, b in zip(before[1:], after[1:]):
        if a != b:
            if a[:3] != b[:3]:
                return f"module order changed at {a[0]}.{a[1] or '<root>'} (now {b[0]}.{b[1] or '<root>'})"
            what = ["instance forward", "forward hooks", "forward pre-hooks", "diffusers hooks"]
            changed = [w for w, x, y in zip(what, a[3:], b[3:]) if x != y]
            return f"{a[0]}.{a[1] or '<root>'}: {', '.join(changed)} left behind"
    return "modules were added or removed"


def call_pipeline(pipe: Any, kwargs: dict) -> torch.Tensor:
    """Run the pipeline and return its output as a float tensor (images in [0, 1] or waveforms)."""
    kind = output_kind_of(pipe)
    if kind == "audio":
        audios = pipe(**kwargs).audios
        return torch.as_tensor(audios, dtype=torch.float32)
    if kind == "video":  # (B, F, C, H, W) in [0, 1]
        return pipe(output_type="pt", **kwargs).frames.float().cpu()
    return pipe(output_type="pt", **kwargs).images.float().cpu()


Scorer = Callable[[torch.Tensor, str], "dict[str, float]"]


def fidelity(pipe: Any, test: torch.Tensor, reference: torch.Tensor, notices: list[str]) -> dict[str, float | None]:
    if is_audio(pipe):
        from ..audio_io import pipeline_sample_rate
        from ..metrics.audio import audio_fidelity

        return audio_fidelity(test, reference, pipeline_sample_rate(pipe))
    if output_kind_of(pipe) == "video":
        from ..metrics.video import video_fidelity

        return video_fidelity(test, reference)
    from ..metrics.image import lpips, psnr, ssim

    lp = lpips(test, reference)
    if lp is None and "LPIPS not computed: its weights are not available offline" not in notices:
        notices.append("LPIPS not computed: its weights are not available offline")
    return {"psnr_db": psnr(test, reference), "ssim": ssim(test, reference), "lpips": lp}


class PipelineNotRestoredError(RuntimeError):
    """A method left hooks or patches behind: later measurements would be wrong, so not per-peer."""


def _timed(pipe: Any, method: Method, kwargs: dict, reference: tuple | None = None) -> tuple[torch.Tensor, float]:
    """One timed generation; with ``reference``, fail if the method left the pipeline changed."""
    method.apply(pipe)
    try:
        start = time.perf_counter()
        out = call_pipeline(pipe, method.call_kwargs(kwargs))
        return out, time.perf_counter() - start
    finally:
        method.remove(pipe)
        if reference is not None:
            after = pipeline_fingerprint(pipe)
            if after != reference:
                raise PipelineNotRestoredError(
                    f"{method.label} did not restore the pipeline on removal ({_fingerprint_diff(reference, after)}); "
                    f"every method measured after it would run on a modified pipeline, so the bench stops. "
                    f"Leave {method.label} out (--methods) or fix its remove()."
                )


def _flops_and_memory(pipe: Any, method: Method, kwargs: dict, device: torch.device, memory: str) -> tuple[float | None, float | None, int, dict]:
    """FLOPs, peak memory, denoiser forwards and the method's report, from one (untimed) generation;
    the flop counter's bookkeeping is small next to the activations, so one run serves both."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = ForwardCounter(denoiser_of(pipe))
    method.apply(pipe)
    try:
        flops = FlopCounterMode(display=False)
        with PeakMemory(device, memory) as mem, flops:
            call_pipeline(pipe, method.call_kwargs(kwargs))
        return float(flops.get_total_flops()), mem.peak_mb, counter.count, method.report(pipe)
    finally:
        method.remove(pipe)
        counter.close()


def bench_case(
    pipe: Any, case: Case, methods: list[Method], base_kwargs: dict, repeats: int, notices: list[str],
    failures: dict[str, str], reference: tuple | None = None, memory: str | None = None, scorer: Scorer | None = None,
    tick: Callable[[str], None] | None = None,
) -> list[CaseResult]:
    """All methods on one (prompt, seed): interleaved timing, then FLOPs/memory, then fidelity.
    ``tick(label)`` is called after every generation (progress)."""
    tick = tick or (lambda label: None)
    device = denoiser_of(pipe).device
    memory = memory or memory_method(device)

    def kwargs_for() -> dict:
        return {**base_kwargs, "prompt": case.prompt, "generator": torch.Generator(device="cpu").manual_seed(case.seed)}

    def failed(m: Method, err: Exception) -> None:
        if m.label == "baseline" or isinstance(err, PipelineNotRestoredError):
            raise err
        failures[m.label] = f"failed on this pipeline: {type(err).__name__}: {err}"
        everyone.remove(m)

    everyone = [parse_method("baseline")] + [m for m in methods if m.label not in failures]
    outputs: dict[str, torch.Tensor] = {}
    for m in list(everyone):  # warm-up, also the output used for fidelity (runs are deterministic per seed)
        try:
            outputs[m.label], _ = _timed(pipe, m, kwargs_for(), reference)
            tick(f"{m.label} warm-up")
        except Exception as err:  # a peer that breaks on this pipeline is reported, not fatal
            failed(m, err)
    times: dict[str, list[float]] = {m.label: [] for m in everyone}
    for _ in range(repeats):
        for m in list(everyone):
            try:
                _, seconds = _timed(pipe, m, kwargs_for(), reference)
                tick(m.label)
            except Exception as err:
                failed(m, err)
                continue
            times[m.label].append(seconds)
    base_s = statistics.median(times["baseline"])
    results = []
    for m in list(everyone):
        try:
            flops, peak, forwards, extra = _flops_and_memory(pipe, m, kwargs_for(), device, memory)
            tick(f"{m.label} FLOPs/memory")
        except Exception as err:
            failed(m, err)
            continue
        wall = statistics.median(times[m.label])
        scores = fidelity(pipe, outputs[m.label], outputs["baseline"], notices)
        if scorer is not None:
            scores.update(scorer(outputs[m.label], case.prompt))
        results.append(
            CaseResult(
                case=case.index, prompt=case.prompt, seed=case.seed, method=m.label, wall_s=wall,
                baseline_s=base_s, speedup=base_s / wall, denoiser_forwards=forwards, flops=flops,
                peak_mem_mb=peak, fidelity=scores, extra=extra,
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
    sweep: bool = False,
    scorer: Scorer | None = None,
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
    for m in parsed:
        reason = m.not_applicable(pipe)
        if reason:
            not_applicable[m.label] = reason
        else:
            usable.append(m)
    cases = [Case(i, p, s) for i, (p, s) in enumerate((p, s) for p in prompts for s in seeds)]
    base_kwargs = {"num_inference_steps": steps, **(call_kwargs or {})}
    device = denoiser_of(pipe).device
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
    if type(pipe).__name__ == "MusicLDMPipeline":
        from ..plugins.audio import fix_musicldm

        if fix_musicldm(pipe):  # else diffusers 0.42.1 cannot encode a prompt under transformers 5
            notices.append("MusicLDM: sadakit.plugins.audio.fix_musicldm applied (transformers 5 CLAP "
                           "text features), for the baseline and every method alike")
    reference = pipeline_fingerprint(pipe)
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
                                       reference=reference, memory=memory, scorer=scorer, tick=tick))
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
