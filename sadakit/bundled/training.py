"""Training pieces shared by the bundled models' scripts (``scripts/train_shapes.py``,
``scripts/train_notes.py``, ``scripts/train_shapes_dit.py``).

Why a module: the scripts train their denoisers the same way (seeded generators, a latent bank,
EMA weights, warm-up + cosine learning rate, clipped steps, a logged loop with wall time and a
resumable checkpoint) and must stay bit-reproducible from their seed; one implementation keeps
the recipes from drifting apart. Two objectives: DDPM v-prediction (the UNets) and flow matching
(the Flux DiT).
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn


def log(msg: str) -> None:
    """A timestamped progress line, flushed (training runs under ``nohup``)."""
    print(time.strftime("%H:%M:%S"), msg, flush=True)


class Progress:
    """Seconds per step, the wall time so far and the time left, measured from construction."""

    def __init__(self, steps: int, first_step: int = 0, seconds_before: float = 0.0) -> None:
        self.steps = steps
        self.first_step = first_step  # a resumed run counts its rate from where it restarted
        self.seconds_before = seconds_before  # wall time of the run before it was resumed
        self.started = time.time()

    def __call__(self, step: int, message: str) -> None:
        rate = (time.time() - self.started) / (step + 1 - self.first_step)
        log(f"{message} ({rate:.2f}s/step, wall {self.seconds / 60:.1f} min, "
            f"eta {rate * (self.steps - step - 1) / 60:.1f} min)")

    @property
    def seconds(self) -> float:
        """Wall seconds of the whole run (including before a resume)."""
        return self.seconds_before + time.time() - self.started


def seeded(seed: int, offset: int = 0) -> torch.Generator:
    """Seed torch's global generator with ``seed`` (weight init) and return a data generator
    seeded ``seed + offset`` (batches, noise): each stage draws from its own stream."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed + offset)


def encode_latent_bank(encode: Callable[[torch.Tensor], object], sample: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
                       size: int, chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``size`` training examples as (labels, posterior means, posterior stds), drawn ``chunk`` at a
    time from ``sample(chunk) -> (labels, images)`` and encoded by ``encode(images)`` (a VAE's
    ``latent_dist``). Why a bank: encoding is most of a step's cost; a fresh posterior sample
    ``mean + std * noise`` is drawn per step instead."""
    labels, means, stds = [], [], []
    with torch.no_grad():
        for _ in range(size // chunk):
            lab, x = sample(chunk)
            post = encode(x)
            labels.append(lab)
            means.append(post.mean)
            stds.append(post.std)
    return torch.cat(labels), torch.cat(means), torch.cat(stds)


def drop_local_paths(model_dir: Path) -> None:
    """Remove ``_name_or_path`` (this machine's directory, set by ``from_pretrained`` when a part
    was loaded rather than built) from a saved pipeline's configs: shipped files name no local path."""
    for config in model_dir.glob("*/config.json"):
        data = json.loads(config.read_text())
        if data.pop("_name_or_path", None) is not None:
            config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


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


def flow_matching_pair(clean: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """The DiT's input and target at noise levels ``sigmas`` in [0, 1] (rectified flow, as
    ``FlowMatchEulerDiscreteScheduler`` samples): ``(1 - s) x0 + s eps`` and the velocity
    ``eps - x0``, which its Euler step ``x + (s_next - s) v`` follows back to ``x0`` at s = 0."""
    s = sigmas.view(-1, *([1] * (clean.dim() - 1))).to(clean.dtype)
    return (1 - s) * clean + s * noise, noise - clean


#: How the base noise levels of :func:`sample_sigmas` are drawn.
SIGMA_SAMPLINGS = ("uniform", "logit-normal")


def sample_sigmas(n: int, high_noise_frac: float, generator: torch.Generator, high_from: float = 0.85,
                  base: str = "uniform") -> torch.Tensor:
    """Noise levels in [0, 1): uniform, or ``base="logit-normal"`` (sigmoid of a standard normal,
    SD3's choice, which puts the weight on middle levels), a fraction ``high_noise_frac`` of them
    redrawn from ``[high_from, 1)``. Why the redraw: on an 8x8 latent only the noisiest levels hide
    where the shape is, so only they teach the model to take the position from the prompt (as in
    the shapes UNet). Why logit-normal: the middle levels are where an outline is decided."""
    if base == "uniform":
        s = torch.rand(n, generator=generator)
    elif base == "logit-normal":
        s = torch.sigmoid(torch.randn(n, generator=generator))
    else:
        raise ValueError(f"unknown sigma sampling {base!r}; expected one of {SIGMA_SAMPLINGS}")
    if high_noise_frac > 0:
        high = torch.rand(n, generator=generator) < high_noise_frac
        s[high] = high_from + (1 - high_from) * torch.rand(int(high.sum()), generator=generator)
    return s


# ------------------------------------------------------------------------ the loop


@dataclass
class Checkpoint:
    """Where a loop saves its full state every ``every`` steps (weights, EMA, optimiser,
    schedule, generators, running loss, wall time), so ``resume`` continues the same run: the
    resumed steps draw the same batches as an uninterrupted run would have.

    Saved with ``torch.save`` and read back with ``weights_only=True`` (tensors and plain
    containers only, no pickled code): the file is the script's own scratch output.
    """

    path: Path
    every: int = 250
    resume: bool = False


@dataclass
class LoopResult:
    """What a training loop reports: the smoothed loss, wall seconds (whole run), first step run."""

    running_loss: float | None
    seconds: float
    first_step: int
    history: list[dict] = field(default_factory=list)


def _state(modules: tuple[nn.Module, ...], ema: EMA | None, optimizer: torch.optim.Optimizer,
           scheduler: torch.optim.lr_scheduler.LRScheduler, generators: tuple[torch.Generator, ...]) -> dict:
    return {
        "modules": [m.state_dict() for m in modules],
        "ema": [m.state_dict() for m in ema.averaged] if ema is not None else [],
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "generators": [g.get_state() for g in generators],
        "torch_rng": torch.get_rng_state(),
    }


def run_loop(
    steps: int,
    loss_of_step: Callable[[int], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    params: Iterable[nn.Parameter] = (),
    max_grad_norm: float | None = None,
    ema: EMA | None = None,
    label: str = "train",
    log_every: int = 50,
    smoothing: float = 0.98,
    on_step_end: Callable[[int, LoopResult], bool] | None = None,
    checkpoint: Checkpoint | None = None,
    modules: tuple[nn.Module, ...] = (),
    generators: tuple[torch.Generator, ...] = (),
) -> LoopResult:
    """The shared optimisation loop: ``loss_of_step(step)`` (draws the batch and runs the
    model), backward, clip, optimiser and LR step, EMA update, a smoothed loss logged every
    ``log_every`` steps with s/step, wall time and time left.

    ``on_step_end(step, result)`` runs after each step (saving, evaluation); returning True stops
    the loop early. With a ``checkpoint``, ``modules``, ``ema``, optimiser, schedule and
    ``generators`` are saved every ``checkpoint.every`` steps and at the end, and
    ``checkpoint.resume`` restarts after the last saved step.
    """
    params = list(params)
    new_weight = round(1 - smoothing, 12)  # 0.02, not 1 - 0.98 = 0.020000000000000018: logs match the old loops
    first, running, seconds_before, history = 0, None, 0.0, []
    if checkpoint is not None and checkpoint.resume:
        if not checkpoint.path.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {checkpoint.path}")
        saved = torch.load(checkpoint.path, weights_only=True)
        for module, state in zip(modules, saved["modules"]):
            module.load_state_dict(state)
        if ema is not None:
            for module, state in zip(ema.averaged, saved["ema"]):
                module.load_state_dict(state)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        for g, state in zip(generators, saved["generators"]):
            g.set_state(state)
        torch.set_rng_state(saved["torch_rng"])
        first, running, seconds_before = saved["step"] + 1, saved["running_loss"], saved["seconds"]
        history = list(saved.get("history", []))
        log(f"{label}: resumed from {checkpoint.path} after step {saved['step']} ({seconds_before / 60:.1f} min before)")
    progress = Progress(steps, first, seconds_before)
    result = LoopResult(running, seconds_before, first, history)
    for step in range(first, steps):
        loss = loss_of_step(step)
        optimizer_step(loss, optimizer, scheduler, params, max_grad_norm)
        if ema is not None:
            ema.update(step)
        value = loss.item()
        running = value if running is None else smoothing * running + new_weight * value
        result.running_loss, result.seconds = running, progress.seconds
        if step % log_every == 0 or step == steps - 1:
            progress(step, f"{label} step {step} loss {running:.4f}")
        stop = bool(on_step_end(step, result)) if on_step_end is not None else False
        last = stop or step == steps - 1
        if checkpoint is not None and ((step + 1) % checkpoint.every == 0 or last):
            state = _state(modules, ema, optimizer, scheduler, generators)
            state.update(step=step, running_loss=running, seconds=progress.seconds, history=result.history)
            checkpoint.path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(state, checkpoint.path.with_suffix(".tmp"))
            checkpoint.path.with_suffix(".tmp").replace(checkpoint.path)  # never a half-written checkpoint
        if stop:
            break
    result.seconds = progress.seconds
    return result
