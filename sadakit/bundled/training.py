"""Training pieces shared by the bundled models' scripts (``scripts/train_shapes.py``,
``scripts/train_notes.py``).

Why a module: both scripts train a UNet the same way (DDPM forward process, v-prediction,
EMA weights, warm-up + cosine learning rate, clipped steps) and must stay bit-reproducible
from their seed; one implementation keeps the two recipes from drifting apart.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterable

import torch
from torch import nn


def log(msg: str) -> None:
    """A timestamped progress line, flushed (training runs under ``nohup``)."""
    print(time.strftime("%H:%M:%S"), msg, flush=True)


class Progress:
    """Seconds per step and the time left, measured from construction."""

    def __init__(self, steps: int) -> None:
        self.steps = steps
        self.started = time.time()

    def __call__(self, step: int, message: str) -> None:
        rate = (time.time() - self.started) / (step + 1)
        log(f"{message} ({rate:.2f}s/step, eta {rate * (self.steps - step - 1) / 60:.1f} min)")

    @property
    def seconds(self) -> float:
        return time.time() - self.started


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
                   params: Iterable[nn.Parameter] = (), max_grad_norm: float | None = None) -> None:
    """Backward, clip the gradient norm of ``params`` (if ``max_grad_norm``), step the optimiser
    and the learning-rate schedule."""
    optimizer.zero_grad()
    loss.backward()
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    scheduler.step()


def warmup_cosine(optimizer: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over the first 5% of ``steps``, then a cosine decay to zero at ``steps``."""
    warmup = max(1, steps // 20)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))
    )


def ema_decay(step: int, max_decay: float = 0.995) -> float:
    """``min(max_decay, (1 + step) / (10 + step))``: early weights are forgotten quickly."""
    return min(max_decay, (1 + step) / (10 + step))


class EMA:
    """Exponential moving averages of some modules' weights (frozen, eval-mode copies)."""

    def __init__(self, *modules: nn.Module, max_decay: float = 0.995) -> None:
        self.live = modules
        self.averaged = tuple(copy.deepcopy(m).eval() for m in modules)
        self.max_decay = max_decay
        for average in self.averaged:
            average.requires_grad_(False)

    @torch.no_grad()
    def update(self, step: int) -> None:
        decay = ema_decay(step, self.max_decay)
        for average, live in zip(self.averaged, self.live):
            for pa, pl in zip(average.parameters(), live.parameters()):
                pa.lerp_(pl, 1 - decay)


def v_prediction_pair(clean: torch.Tensor, noise: torch.Tensor, alphas_cumprod: torch.Tensor,
                      timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The UNet's input and target at ``timesteps``: the DDPM forward process
    ``sqrt(a) x0 + sqrt(1 - a) eps`` and the velocity ``sqrt(a) eps - sqrt(1 - a) x0``.

    Not a scheduler's ``add_noise``: Euler's returns the unscaled ``x0 + sigma eps`` it samples
    in, which is not what the UNet is fed (a shapes run trained on it learned the wrong inputs).
    """
    a = alphas_cumprod[timesteps].view(-1, *([1] * (clean.dim() - 1)))
    return a.sqrt() * clean + (1 - a).sqrt() * noise, a.sqrt() * noise - (1 - a).sqrt() * clean
