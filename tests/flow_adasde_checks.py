"""The shared run of the flow-model AdaSDE tests: a bundled model's default file against diffusers' Euler."""

from __future__ import annotations

from typing import Any, Callable

import torch


def adasde_and_flow_euler(pipe: Any, name: str, generate: Callable[..., torch.Tensor], prompts: list[str], seed: int,
                          nfe: int = 5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """From the same noise: the pipeline's default output, the default AdaSDE file's at ``nfe``
    (``bundled_adasde(name)``), diffusers' FlowMatchEuler's at ``nfe``, and the transformer calls of the
    AdaSDE run. The pipeline's own scheduler is put back whatever happens."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from sadakit.adasde import AdaSDEScheduler
    from sadakit.bundled.adasde_files import bundled_adasde

    own = pipe.scheduler
    pipe.set_progress_bar_config(disable=True)
    try:
        reference = generate(pipe, prompts, seed=seed)
        pipe.scheduler = bundled_adasde(name).scheduler(pipe, nfe=nfe)
        assert isinstance(pipe.scheduler, AdaSDEScheduler) and pipe.scheduler.meta.grid_logits is not None
        calls = []
        hook = pipe.transformer.register_forward_pre_hook(lambda m, a: calls.append(1))
        try:
            learned = generate(pipe, prompts, seed=seed, num_inference_steps=nfe)
        finally:
            hook.remove()
        pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(own.config)
        euler = generate(pipe, prompts, seed=seed, num_inference_steps=nfe)
    finally:
        pipe.scheduler = own
    return reference, learned, euler, len(calls)
