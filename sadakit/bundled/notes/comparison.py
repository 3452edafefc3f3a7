"""Baseline vs SADA on the notes model: log-mel PSNR (of the audio and of the decoded mels) and
pitch/timbre adherence."""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..comparison import Comparison, compare_sada
from .judging import adherence
from .model import DEFAULT_GUIDANCE, DEFAULT_STEPS, SAMPLE_RATE, eval_prompts, generate_with_mels


def compare(
    pipe: Any,
    config: Any = None,
    config_name: str = "default",
    n_prompts: int = 16,
    seed: int = 0,
    repeats: int = 3,
    num_inference_steps: int = DEFAULT_STEPS,
    guidance_scale: float = DEFAULT_GUIDANCE,
    on_run: Callable[[str], None] | None = None,
) -> Comparison:
    """Baseline and ``sadakit.accelerate(pipe, config)`` on the first ``n_prompts`` prompts in one
    batch; fidelity of the audio and of the log-mels the VAE decoded before the vocoder."""
    from sadakit.metrics.audio import log_mel_psnr, spectrogram_psnr

    prompts = eval_prompts(n_prompts)

    def run(steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        return generate_with_mels(pipe, prompts, seed, steps, guidance_scale, batch_size=len(prompts))

    def fidelity(test: tuple, reference: tuple) -> dict[str, float]:
        return {"log_mel_psnr_db": log_mel_psnr(test[0], reference[0], SAMPLE_RATE),
                "generated_mel_psnr_db": spectrogram_psnr(test[1], reference[1])}

    return compare_sada(
        pipe, run, prompts, num_inference_steps, fidelity, lambda out: adherence(out[0], prompts, out[1]),
        lambda out: out[0], config, config_name, repeats, on_run,
    )
