"""Baseline vs SADA on a bundled model: what both models' ``compare`` return.

Evaluation code. The protocol is the harness's (:func:`sadakit.bench.harness.baseline_vs_sada`);
each model adds its fidelity measures and its judge (prompt adherence).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Callable

import torch


@dataclass(frozen=True)
class Comparison:
    """Baseline vs SADA on the same prompts and seeds (wall times: medians of alternating runs,
    because run-to-run noise on a shared CPU is +-30 %)."""

    config_name: str
    steps: int
    prompts: list[str]
    denoiser_calls: int
    network_calls: int
    #: fraction of (call, batch row) pairs computed: SADA decides per sample, so a call can run
    #: for some rows only ("M" in the report) and save time without lowering network_calls
    computed_row_fraction: float
    #: accelerated denoiser FLOPs / baseline's (from the report; None when not counted)
    flops_ratio: float | None
    baseline_times: tuple[float, ...]  # per repeat, paired with sada_times, in run order
    sada_times: tuple[float, ...]
    fidelity: dict[str, float]  # SADA's output against the baseline's
    baseline_adherence: Any  # the model's judge on each side (an ``as_dict()`` result)
    sada_adherence: Any
    baseline_output: torch.Tensor  # images (n, 3, H, W) or waveforms (n, samples)
    sada_output: torch.Tensor

    @property
    def baseline_s(self) -> float:
        return statistics.median(self.baseline_times)

    @property
    def sada_s(self) -> float:
        return statistics.median(self.sada_times)

    @property
    def speedup(self) -> float:
        return self.baseline_s / self.sada_s

    def row(self) -> dict[str, Any]:
        """The numbers only (no outputs), for tables and JSON."""
        return {
            "config": self.config_name, "steps": self.steps, "n": len(self.prompts),
            "denoiser_calls": self.denoiser_calls, "network_calls": self.network_calls,
            "computed_row_fraction": self.computed_row_fraction, "flops_ratio": self.flops_ratio,
            "baseline_s": self.baseline_s, "sada_s": self.sada_s, "speedup": self.speedup, **self.fidelity,
            "baseline_adherence": self.baseline_adherence.as_dict(), "sada_adherence": self.sada_adherence.as_dict(),
        }


def compare_sada(
    pipe: Any,
    generate: Callable[[int], Any],
    prompts: list[str],
    steps: int,
    fidelity: Callable[[Any, Any], dict[str, float]],
    judge: Callable[[Any], Any],
    primary: Callable[[Any], torch.Tensor],
    config: Any = None,
    config_name: str = "default",
    repeats: int = 3,
    on_run: Callable[[str], None] | None = None,
) -> Comparison:
    """``generate(steps)`` on the plain and the accelerated ``pipe``; ``fidelity(sada, baseline)``,
    ``judge(output)`` and ``primary(output)`` (the tensor kept) read the model's outputs."""
    from sadakit.bench.harness import baseline_vs_sada

    base, sada = baseline_vs_sada(pipe, lambda kwargs: generate(kwargs["num_inference_steps"]),
                                  lambda: {"num_inference_steps": steps}, config, repeats, on_run=on_run)
    report = sada.report
    return Comparison(
        config_name=config_name, steps=steps, prompts=list(prompts),
        denoiser_calls=report["denoiser_calls"], network_calls=report["network_calls"],
        computed_row_fraction=report["computed_row_fraction"], flops_ratio=report["flops_ratio"],
        baseline_times=tuple(base.times), sada_times=tuple(sada.times),
        fidelity=fidelity(sada.output, base.output),
        baseline_adherence=judge(base.output), sada_adherence=judge(sada.output),
        baseline_output=primary(base.output), sada_output=primary(sada.output),
    )


def comparison_for(
    model: Any,
    fidelity: Callable[[Any, Any], dict[str, float]],
    adherence: Callable[[Any, list[str], Any], Any],
    load_judge: Callable[[], Any],
    default_prompts: int,
) -> Callable[..., Comparison]:
    """``compare`` for a bundled model whose module has ``eval_prompts``, ``generate`` and
    default sampling: baseline and ``sadakit.accelerate(pipe, config)`` on the first
    ``n_prompts`` evaluation prompts, all in one batch (one pipeline call, so a wall time is one
    generation's), ``fidelity(sada, baseline)`` and ``adherence(outputs, prompts, judge)``."""

    def compare(
        pipe: Any,
        config: Any = None,
        config_name: str = "default",
        n_prompts: int = default_prompts,
        seed: int = 0,
        repeats: int = 3,
        num_inference_steps: int = model.DEFAULT_STEPS,
        guidance_scale: float = model.DEFAULT_GUIDANCE,
        classifier: Any = None,
        on_run: Callable[[str], None] | None = None,
    ) -> Comparison:
        """Baseline vs ``sadakit.accelerate(pipe, config)`` on the first ``n_prompts`` evaluation prompts."""
        prompts = model.eval_prompts(n_prompts)
        judge = classifier if classifier is not None else load_judge()

        def run(steps: int) -> torch.Tensor:
            return model.generate(pipe, prompts, seed, steps, guidance_scale, batch_size=len(prompts))

        return compare_sada(pipe, run, prompts, num_inference_steps, fidelity,
                            lambda outputs: adherence(outputs, prompts, judge), lambda outputs: outputs,
                            config, config_name, repeats, on_run)

    return compare
