"""Shared measuring tools of the plugin tests: real forwards, PSNR, a plain pipeline per test."""

from __future__ import annotations

from typing import Any, Iterator

import torch

import sadakit


class Forwards:
    """Real network forwards, counted by a pre-hook on a layer that runs once per computed call
    (a patch embedding or input projection), never from sadakit's own report."""

    def __init__(self, layer: torch.nn.Module) -> None:
        self.count = 0
        self.rows = 0  # rows computed, over all counted forwards
        self._handle = layer.register_forward_pre_hook(self._hook)

    def _hook(self, module: torch.nn.Module, args: tuple) -> None:
        self.count += 1
        self.rows += args[0].shape[0]

    def close(self) -> None:
        self._handle.remove()


def psnr(test: torch.Tensor, reference: torch.Tensor) -> float:
    """PSNR in dB over the reference's value range (outputs here are latents, not [0, 1] images)."""
    mse = torch.mean((test - reference) ** 2).item()
    return 10 * torch.log10((reference.max() - reference.min()) ** 2 / max(mse, 1e-20)).item()


def plain(pipe: Any) -> Iterator[Any]:
    """For a fixture: the pipeline unaccelerated before and after the test, its scheduler restored."""
    sadakit.remove(pipe)
    scheduler = pipe.scheduler
    yield pipe
    sadakit.remove(pipe)
    pipe.scheduler = scheduler
