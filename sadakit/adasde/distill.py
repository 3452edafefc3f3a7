"""Distil AdaSDE coefficients against a many-step teacher (docs/design.md section 3).

Recipe: the teacher solves the probability-flow ODE with a second-order (geometric
mid-point) solver on the student's grid refined ``teacher_factor`` times; the student rolls
out from the same starting noise with its own churn; the loss is the per-step L2 to the
teacher's state at the matching sigma, with a pluggable feature loss at the last step
(latent L2 by default). Adam with cosine decay, lr ~0.1, and only the ``(steps, 4)`` raw
coefficients train: the model is frozen and never differentiated with respect to its
weights.

With ``learn_grid=True`` the student's interior sigmas train too (``sadakit.adasde.grid``:
softmax shares of the log-sigma drop between the fixed ends, so every grid is valid). The
teacher then runs on the current grid refined ``teacher_factor`` times at every iteration.
The grid learns from the last-step term only: a per-step term compares with the teacher *at
that node*, so moving the node changes what it measures, and on the testbed letting those
terms move the grid pulled the nodes up and made the final error worse (docs/adasde.md).
The coefficients still learn from the whole loss.

With ``learn_ends=True`` (the Euler and multistep forms) the top and the bottom of the grid train too
(``sadakit.adasde.grid.grid_with_ends``: top within the model's sigma range, bottom above its
lowest sigma, then one last step to sigma 0, as diffusers' Euler ends), and the teacher no longer
follows the student's grid: it starts from the model's own top sigma, as a many-step reference
run of the pipeline does, and solves the ODE down to 0 on a fixed grid of ``teacher_factor * steps``
mid-point steps (``reference_grid``). The loss is then the last-step term alone (there is no
teacher state at the student's moving nodes), so the target is the reference output itself.

Input is any VE denoiser ``D(x, sigma)`` (a callable: testbed, or a plugin's pipeline
denoiser with its prompts and CFG, adapted by ``sadakit.core.parameterization``) and a
``sample_noise(batch, generator) -> unit noise`` function. The output is a coefficient file
(safetensors + JSON metadata) that ``AdaSDEScheduler.from_file`` loads.

Data parallel: when launched with ``torchrun``/``accelerate launch``, every process takes its
share of each batch (noise seeded from ``(seed, iteration, rank)``: reproducible for a given
number of processes, independent between processes) and the gradients of the few
coefficients are summed across processes, so every process takes the same Adam step. Devices are the denoiser's business: the sharding code only deals in batch
sizes, seeds and small gradient vectors.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from typing import Any

import attrs
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ..core.adasde import (
    BASE_SOLVERS,
    MULTISTEP_NO_AFS,
    Denoiser,
    init_multistep_raw,
    init_raw_coefficients,
    make_sigmas,
    refine_sigmas,
    run_plan,
    sample_midpoint,
    solver_plan,
    squash,
    steps_for_nfe,
)
from .coefficients import ENDS_SOLVERS, CoefficientFile, CoefficientMetadata, save_coefficients
from .grid import MAX_END_LOGIT, end_logits_for, grid_from_logits, grid_with_ends, logits_for_grid
from .identity import fingerprint_or_none

NoiseSampler = Callable[[int, torch.Generator], torch.Tensor]
"""``sample_noise(batch, generator) -> z``: unit Gaussian noise of a batch, on the model's device."""
FeatureLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``loss(student_x, teacher_x) -> scalar``: the last-step loss (e.g. in a feature space)."""


def latent_l2(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared error per element: the default where no feature network is available."""
    return (student - teacher).pow(2).mean()


def sliced_w2_loss(student: torch.Tensor, teacher: torch.Tensor, projections: int = 64) -> torch.Tensor:
    """Squared sliced Wasserstein-2 between the student and teacher *batches*.

    A distribution-level last-step loss: it does not punish a stochastic solver for ending
    on a different (equally likely) sample than the teacher's, only for a different
    distribution. Directions are drawn from a fixed seed so the loss is deterministic.
    """
    s = student.reshape(student.shape[0], -1)
    t = teacher.reshape(teacher.shape[0], -1).to(s.dtype)
    g = torch.Generator().manual_seed(0)
    dirs = torch.randn(s.shape[1], projections, generator=g).to(device=s.device, dtype=s.dtype)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    ps, _ = (s @ dirs).sort(dim=0)
    pt, _ = (t @ dirs).sort(dim=0)
    return (ps - pt).pow(2).mean()


def _positive_int(inst: Any, attribute: attrs.Attribute, value: int) -> None:
    if not (isinstance(value, int) and value >= 1):
        raise ValueError(f"{attribute.name}={value!r} must be an integer >= 1")


def _in(allowed: tuple[str, ...]):
    def check(inst: Any, attribute: attrs.Attribute, value: str) -> None:
        if value not in allowed:
            raise ValueError(f"{attribute.name}={value!r} is not allowed; allowed: {', '.join(allowed)}")

    return check


@attrs.frozen
class DistillConfig:
    """Settings of one distillation run (recorded in the coefficient file's metadata).

    ``sigma_min``/``sigma_max``/``schedule``/``rho`` build the student grid unless an
    explicit grid is passed to ``distill``. ``start_scale`` multiplies the unit noise into
    the VE start state; ``None`` means ``sigma_max`` (VP/EDM convention) or ``1 + sigma_max``
    for flow-matching models (how ``AdaSDEScheduler`` reads a flow pipeline's latents).
    ``gamma_max = 0`` distils the deterministic ablation. ``step_weight`` weighs the per-step
    L2 at the intermediate nodes and ``last_step_weight`` the feature loss at the last one.
    ``learn_grid`` trains the interior sigmas too (Adam at ``grid_lr``, same cosine decay),
    starting from the grid ``schedule`` (or the one passed) gives; the ends stay fixed unless
    ``learn_ends`` (Euler or multistep form, ``step_weight = 0``): then top and bottom train too, at ``grid_lr``,
    the grid ends with a step to sigma 0 and the teacher starts at the model's top sigma. Such a
    teacher does not depend on the student, so ``teacher_pool = k > 0`` computes it once for ``k``
    batches and iteration ``i`` trains on batch ``i mod k`` (as LD3 fits a grid to a fixed set of
    teacher pairs): each iteration then costs only the student's calls. ``grid_fd_step > 0`` takes
    the grid's gradient by central differences of that size in logit units instead of autograd
    (learned ends, ``gamma_max = 0``; the multistep weights still learn by autograd). Why: a VP model trained on
    integer timesteps wiggles between them, so the exact derivative in sigma is a local one that
    can point the other way than the loss's trend over a 1 % step (measured on the bundled shapes
    model, docs/adasde.md); a difference over a few percent follows the trend. ``keep_best``
    (``teacher_pool = 1``: the same batch every iteration, so losses compare) ends on the grid of the
    lowest loss seen rather than the last one: on a rough loss Adam's last step can be uphill.
    ``multistep_start`` is where the multistep form's weights start: DPM-Solver++(2M) on the
    starting grid (raw zeros) or Euler (the history weights cancelled, so the step is Euler's).
    """

    nfe: int = attrs.field(default=5, validator=_positive_int)
    solver: str = attrs.field(default="adasde", validator=_in(BASE_SOLVERS))
    analytic_first_step: bool = True
    gamma_max: float = attrs.field(default=0.3, validator=attrs.validators.ge(0.0))
    gamma_init: float = attrs.field(default=0.05, validator=attrs.validators.ge(0.0))
    sigma_min: float = attrs.field(default=0.002, validator=attrs.validators.gt(0.0))
    sigma_max: float = attrs.field(default=80.0, validator=attrs.validators.gt(0.0))
    schedule: str = attrs.field(default="karras", validator=_in(("karras", "loglinear", "time_uniform")))
    rho: float = attrs.field(default=7.0, validator=attrs.validators.gt(0.0))
    teacher_factor: int = attrs.field(default=8, validator=_positive_int)
    iterations: int = attrs.field(default=200, validator=_positive_int)
    batch_size: int = attrs.field(default=256, validator=_positive_int)
    lr: float = attrs.field(default=0.1, validator=attrs.validators.gt(0.0))
    last_step_weight: float = attrs.field(default=1.0, validator=attrs.validators.ge(0.0))
    step_weight: float = attrs.field(default=1.0, validator=attrs.validators.ge(0.0))
    checkpoint_every: int = attrs.field(default=50, validator=_positive_int)
    seed: int = 0
    start_scale: float | None = None
    learn_grid: bool = False
    grid_lr: float = attrs.field(default=0.05, validator=attrs.validators.gt(0.0))
    learn_ends: bool = False
    teacher_pool: int = attrs.field(default=0, validator=attrs.validators.ge(0))
    grid_fd_step: float = attrs.field(default=0.0, validator=attrs.validators.ge(0.0))
    keep_best: bool = False
    multistep_start: str = attrs.field(default="dpm++2m", validator=_in(("dpm++2m", "euler")))

    def __attrs_post_init__(self) -> None:
        if self.solver == "multistep" and self.analytic_first_step:
            raise ValueError(MULTISTEP_NO_AFS)

    @property
    def steps(self) -> int:
        return steps_for_nfe(self.nfe, self.solver, self.analytic_first_step)


@attrs.define
class DistillResult:
    """The fitted file, the loss per iteration and the wall time (seconds, this run only)."""

    coefficients: CoefficientFile
    losses: list[float]
    initial_loss: float
    seconds: float
    resumed_from: int = 0


# --------------------------------------------------------------------------------------
# Data parallel helpers: batch shares, seeds, gradient sum (no device decisions here)
# --------------------------------------------------------------------------------------


def distributed_state(cpu: bool | None = None):
    """``accelerate.PartialState`` when launched with several processes, else ``None``.

    ``cpu=None`` picks CPU (gloo) when no CUDA device exists, as on this project's machines.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import PartialState

    return PartialState(cpu=(not torch.cuda.is_available()) if cpu is None else cpu)


def shard_sizes(total: int, world: int) -> list[int]:
    """Split a batch of ``total`` between ``world`` processes as evenly as possible."""
    if total < world:
        raise ValueError(f"batch_size={total} is smaller than the number of processes ({world})")
    base, extra = divmod(total, world)
    return [base + (1 if r < extra else 0) for r in range(world)]


def _sum_across(t: torch.Tensor, state) -> torch.Tensor:
    if state is None:
        return t
    from accelerate.utils import reduce

    # the collective runs on the backend's device (gloo: CPU, NCCL: the process's GPU)
    return reduce(t.to(state.device), reduction="sum").to(t.device)


def _generator_like(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def _seed(base: int, iteration: int, rank: int, stream: int) -> int:
    return (base * 1_000_003 + iteration * 7919 + rank * 104_729 + stream * 15_485_863) % (2**63 - 1)


# --------------------------------------------------------------------------------------
# Loss
# --------------------------------------------------------------------------------------


def trajectory_loss(
    denoiser: Denoiser,
    x_start: torch.Tensor,
    sigmas: torch.Tensor,
    raw: torch.Tensor,
    teacher_states: list[torch.Tensor],
    config: DistillConfig,
    generator: torch.Generator,
    feature_loss: FeatureLoss = latent_l2,
    last_term: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Per-step L2 of the student rollout to the teacher states, feature loss at the last step.

    ``last_term`` (if given) receives the weighted last-step term alone (a learned grid trains on it).
    """
    coeffs = squash(raw, config.gamma_max)
    traj: list[torch.Tensor] = []
    plan = solver_plan(x_start, sigmas, coeffs, config.solver, generator, config.analytic_first_step, traj)
    run_plan(plan, lambda x, s: denoiser(x, s).to(torch.float32))
    loss = x_start.new_zeros((), dtype=torch.float32)
    for n, (xs, xt) in enumerate(zip(traj, teacher_states)):
        if n == len(traj) - 1:
            last = config.last_step_weight * feature_loss(xs, xt)
            if last_term is not None:
                last_term.append(last)
            loss = loss + last
        else:
            loss = loss + config.step_weight * latent_l2(xs, xt)
    return loss


@torch.no_grad()
def teacher_trajectory(
    denoiser: Denoiser, x_start: torch.Tensor, sigmas: torch.Tensor, factor: int, fine: torch.Tensor | None = None
) -> list[torch.Tensor]:
    """Teacher states at the student's sigmas ``sigmas[1:]`` (mid-point on a refined grid).

    ``fine`` is that refined grid when the caller built it once (``distill`` does, in float32
    on the model's device); otherwise it is refined here, in float64 on the host.
    """
    if fine is None:
        fine = refine_sigmas(sigmas, factor)
    states: list[torch.Tensor] = []
    sample_midpoint(lambda x, s: denoiser(x, s).to(torch.float32), x_start.to(torch.float32), fine, states)
    return [states[factor * (n + 1) - 1] for n in range(len(sigmas) - 1)]


# --------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------


def _checkpoint_path(output: str) -> str:
    root, _ = os.path.splitext(output)
    return root + ".ckpt.safetensors"


def _save_checkpoint(path: str, raw: torch.Tensor, opt: torch.optim.Adam, iteration: int, config: DistillConfig,
                     losses: list[float], grid_logits: torch.Tensor | None = None,
                     grid_opt: torch.optim.Adam | None = None, end_logits: torch.Tensor | None = None) -> None:
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {"iteration": iteration, "config": attrs.asdict(config), "losses": losses}
    params = [("", raw, opt)] + ([("grid_", grid_logits, grid_opt)] if grid_logits is not None else [])
    params += [("ends_", end_logits, grid_opt)] if end_logits is not None else []
    for prefix, param, optimizer in params:
        st = optimizer.state.get(param, {}) if optimizer is not None else {}
        tensors[prefix + ("raw" if not prefix else "logits")] = param.detach().cpu().contiguous()
        if st:
            tensors[prefix + "exp_avg"] = st["exp_avg"].detach().cpu().contiguous()
            tensors[prefix + "exp_avg_sq"] = st["exp_avg_sq"].detach().cpu().contiguous()
        meta[prefix + "adam_step"] = float(st["step"]) if st else 0.0
    tmp = f"{path}.tmp{os.getpid()}"
    save_file(tensors, tmp, metadata={"sadakit.adasde.checkpoint": json.dumps(meta)})
    os.replace(tmp, path)


def _load_checkpoint(path: str, config: DistillConfig) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    if not os.path.exists(path):
        return None
    with safe_open(path, framework="pt", device="cpu") as f:
        meta = json.loads((f.metadata() or {}).get("sadakit.adasde.checkpoint", "{}"))
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    saved = meta.get("config", {})
    ours = attrs.asdict(config)
    # iterations may grow on resume (train longer); everything else must match
    # settings added later are absent from older checkpoints: they were written at the default
    defaults = {"learn_grid": False, "grid_lr": 0.05, "learn_ends": False, "teacher_pool": 0, "grid_fd_step": 0.0,
                "keep_best": False, "multistep_start": "dpm++2m"}
    diff = {k: (saved.get(k, defaults.get(k)), v) for k, v in ours.items()
            if k != "iterations" and saved.get(k, defaults.get(k)) != v}
    if diff:
        raise ValueError(
            f"checkpoint {path} was written with different settings "
            + "; ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, (a, b) in diff.items())
            + "; delete it or pass resume=False"
        )
    return tensors, meta


# --------------------------------------------------------------------------------------
# The distillation loop
# --------------------------------------------------------------------------------------


def _file_metadata(
    config: DistillConfig, grid: torch.Tensor, custom_grid: bool, *, model: str, prediction_type: str,
    guidance_scale: float | None, model_fingerprint: str | None, grid_ends: dict[str, float] | None = None,
    grid_logits: list[float] | None = None,
) -> CoefficientMetadata:
    """The metadata the coefficient file will carry (``training`` is added at the end); checked now."""
    nodes = grid.tolist()  # host floats: no float64 tensor op for two numbers
    positive = nodes[:-1] if grid_ends is not None else nodes  # learned ends: the last node is 0
    return CoefficientMetadata(
        model=model,
        nfe=config.nfe,
        solver=config.solver,
        analytic_first_step=config.analytic_first_step,
        schedule="learned" if (config.learn_grid or config.learn_ends) else "custom" if custom_grid else config.schedule,
        sigma_min=float(positive[-1]),
        sigma_max=float(positive[0]),
        gamma_max=config.gamma_max,
        prediction_type=prediction_type,
        guidance_scale=guidance_scale,
        model_fingerprint=model_fingerprint,
        grid_logits=grid_logits,
        grid_ends=grid_ends,
    )


#: The end logits' learning rate and difference step relative to the interior's: one logit of an
#: end moves it by ``u (1 - u)`` of the model's log-sigma range (~2.4 nats on a 0.03-4096 range),
#: an interior logit its node by ~0.7 nats, so the ends take steps a third the size.
ENDS_STEP_SCALE = 0.3


def _ends_record(end_logits: torch.Tensor, sigma_range: tuple[float, float]) -> dict[str, float]:
    """The ``grid_ends`` metadata object of the current end logits."""
    top, bottom = (float(v) for v in end_logits.detach().cpu().to(torch.float64))
    return {"top_logit": top, "bottom_logit": bottom, "sigma_lo": float(sigma_range[0]), "sigma_hi": float(sigma_range[1])}


def _check_learn_ends(config: DistillConfig, prediction_type: str, sigma_range: tuple[float, float] | None) -> None:
    """Refuse a learned-ends run that cannot work, before any model call (one line: what, why, what to do)."""
    if config.solver not in ENDS_SOLVERS:
        raise ValueError(f"learn_ends=True needs solver='euler' or 'multistep' (the last step goes to sigma 0, which "
                         f"only their one-call steps can take); got solver={config.solver!r}")
    if config.step_weight != 0.0:
        raise ValueError(f"learn_ends=True needs step_weight=0 (the teacher runs from the model's top sigma to 0, so "
                         f"only the last step has a target); got step_weight={config.step_weight}")
    if config.steps < 2:
        raise ValueError(f"learn_ends=True needs at least 2 steps (a top and a bottom node); nfe={config.nfe} gives "
                         f"{config.steps}")
    if prediction_type == "flow":
        raise ValueError("learn_ends=True is for VP/VE models: a flow-matching model's top sigma is infinite")
    if config.start_scale is not None:
        raise ValueError("learn_ends=True learns the top sigma, which is the start scale: leave start_scale=None")
    if sigma_range is None:
        raise ValueError("learn_ends=True needs model_sigma_range=(lowest, highest sigma the model was trained on): "
                         "the teacher starts at the top, the learned ends stay inside it")
    lo, hi = sigma_range
    if not 0.0 < lo < hi:
        raise ValueError(f"model_sigma_range={sigma_range!r} must be (lo, hi) with 0 < lo < hi")


def _model_sigma_range(denoiser: Denoiser) -> tuple[float, float] | None:
    """The model's trained VE range when the denoiser knows it (a pipeline adapter's chart), else ``None``."""
    chart = getattr(denoiser, "chart", None)
    if chart is None or getattr(chart, "flow_matching", True):
        return None
    lo, hi = chart.sigma_range
    return float(lo), float(hi)


#: Above this sigma the ODE barely bends (the denoised estimate is the data mean): the reference
#: grid takes one step from the model's top down to it. Measured on the bundled zero-SNR shapes
#: model (top 4096): 20 Karras steps over the whole range end 0.25 RMS from the 50-step Euler
#: output (12 of the 20 steps sit above sigma 30); with this cap, far closer (docs/adasde.md).
REFERENCE_CAP = 80.0


def reference_grid(steps: int, sigma_lo: float, sigma_hi: float) -> torch.Tensor:
    """The teacher's grid from the model's top ``sigma_hi`` to its lowest ``sigma_lo`` (float64, ``steps + 1`` nodes).

    Karras (rho 7) from ``min(sigma_hi, REFERENCE_CAP)`` down; a top above the cap is reached in
    one first step.
    """
    if sigma_hi <= REFERENCE_CAP or steps < 2:
        return make_sigmas(steps, sigma_lo, sigma_hi, "karras")
    return torch.cat([torch.tensor([sigma_hi], dtype=torch.float64), make_sigmas(steps - 1, sigma_lo, REFERENCE_CAP, "karras")])


@torch.no_grad()
def reference_teacher(denoiser: Denoiser, z: torch.Tensor, fine: torch.Tensor) -> torch.Tensor:
    """The reference output of unit noise ``z`` from ``fine[0] * z`` down the grid ``fine`` (float32, model's device).

    A grid ending at a positive sigma is solved with the mid-point method, then a last step to 0
    (the denoised estimate at the lowest sigma), as a many-step diffusers Euler run ends. A grid
    ending at 0 is a pipeline's own reference schedule (``teacher_sigmas``) and is run with Euler,
    node by node, exactly as that pipeline's Euler scheduler does.
    """
    denoise = lambda x, s: denoiser(x, s).to(torch.float32)  # noqa: E731
    if float(fine[-1]) == 0.0:
        x = z.to(torch.float32) * fine[0]
        for n in range(len(fine) - 1):
            x = x + (fine[n + 1] - fine[n]) * (x - denoise(x, fine[n])) / fine[n]
        return x
    x = sample_midpoint(denoise, z.to(torch.float32) * fine[0], fine)
    return denoise(x, fine[-1])


def per_sample_log_mse(decode: Callable[[torch.Tensor], torch.Tensor] | None = None) -> FeatureLoss:
    """Last-step loss: the mean over samples of ``log(MSE)`` of each sample, after ``decode`` (e.g. the VAE).

    Why: benchmarks compare the mean of per-sample PSNRs (``-10 log10 MSE``), which this is up to
    a constant factor; the mean of squared errors instead weighs the worst samples most (measured
    on the shapes model: a grid 21 % lower in latent MSE had a 0.2 dB lower mean pixel PSNR).
    """

    def loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        a, b = (student, teacher) if decode is None else (decode(student), decode(teacher))
        mse = (a.to(torch.float32) - b.to(torch.float32)).pow(2).flatten(1).mean(1)
        return torch.log(mse + 1e-12).mean()

    return loss


def final_state(denoiser: Denoiser, x_start: torch.Tensor, sigmas: torch.Tensor, raw: torch.Tensor,
                config: DistillConfig, generator: torch.Generator) -> torch.Tensor:
    """The student's last state from ``x_start`` over ``sigmas`` (differentiable in both and in ``raw``)."""
    coeffs = squash(raw, config.gamma_max)
    plan = solver_plan(x_start, sigmas, coeffs, config.solver, generator, config.analytic_first_step)
    out, _ = run_plan(plan, lambda x, s: denoiser(x, s).to(torch.float32))
    return out


def distill(
    denoiser: Denoiser,
    sample_noise: NoiseSampler,
    config: DistillConfig = DistillConfig(),
    *,
    model: str,
    model_fingerprint: str | None = None,
    prediction_type: str = "epsilon",
    guidance_scale: float | None = None,
    sigmas: torch.Tensor | None = None,
    feature_loss: FeatureLoss = latent_l2,
    output: str | os.PathLike | None = None,
    log_path: str | os.PathLike | None = None,
    resume: bool = True,
    progress: bool = True,
    state: Any = "auto",
    model_sigma_range: tuple[float, float] | None = None,
    teacher_sigmas: torch.Tensor | None = None,
) -> DistillResult:
    """Fit AdaSDE (or learned-churn base solver) coefficients for ``denoiser``.

    ``model``, ``prediction_type`` and ``guidance_scale`` go into the file's metadata so that
    loading it into another pipeline fails loudly, and so does ``model_fingerprint`` (default:
    ``sadakit.adasde.model_fingerprint(denoiser)`` when the denoiser is a pipeline adapter or
    a module with a config; a plain callable records none). The metadata is checked before the
    first iteration, so a setting no file may hold fails before minutes of training. With
    ``output`` set, the coefficient file is written there at the end and a checkpoint
    (``<output>.ckpt.safetensors``, coefficients plus Adam moments) every ``checkpoint_every``
    iterations; ``resume=True`` continues from that checkpoint. ``log_path`` receives one JSON line per iteration. ``state`` is an
    ``accelerate.PartialState`` (``"auto"``: created when several processes were launched).
    ``model_sigma_range`` (``learn_ends`` only; default: a pipeline adapter's trained range) is
    where the teacher starts and the learned ends stay; ``sigmas`` then ends with 0.
    ``teacher_sigmas`` (``learn_ends`` only) replaces that teacher by Euler on this grid ending at 0,
    e.g. the pipeline's own 50-step schedule: the target is then exactly the reference output.
    """
    if state == "auto":
        state = distributed_state()
    rank = state.process_index if state is not None else 0
    world = state.num_processes if state is not None else 1
    main = rank == 0
    local_bs = shard_sizes(config.batch_size, world)[rank]
    ends = config.learn_ends
    if config.grid_fd_step and not (ends and config.gamma_max == 0.0):
        raise ValueError(f"grid_fd_step={config.grid_fd_step} needs learn_ends=True and gamma_max=0 (finite differences "
                         "train the grid; the multistep form's weights still learn by autograd)")
    if config.keep_best and not (ends and config.teacher_pool == 1 and config.gamma_max == 0.0):
        raise ValueError("keep_best=True needs learn_ends=True, teacher_pool=1 and gamma_max=0 (one fixed batch and a "
                         "deterministic student, so the losses of different iterations compare)")
    if config.solver not in ("adasde", "multistep") and config.gamma_max == 0.0 and not (config.learn_grid or ends):
        raise ValueError(f"solver={config.solver!r} with gamma_max=0 and a fixed grid has nothing to learn (the plugin "
                         "form trains only the churn): pass gamma_max > 0, learn_grid=True or learn_ends=True")
    if teacher_sigmas is not None and not ends:
        raise ValueError("teacher_sigmas needs learn_ends=True (the teacher that starts at the model's top)")
    if config.teacher_pool and not ends:
        raise ValueError(f"teacher_pool={config.teacher_pool} needs learn_ends=True (only that teacher does not follow "
                         "the student's grid, so it can be computed once)")
    if ends:
        model_sigma_range = model_sigma_range or _model_sigma_range(denoiser)
        _check_learn_ends(config, prediction_type, model_sigma_range)

    # the grid is a host table (float64 so the teacher's refinement nests exactly); the loop
    # reads float32 copies on the model's device, built once below
    if sigmas is not None:
        grid = sigmas.detach().cpu().to(torch.float64).clone()
    elif ends:  # steps positive nodes, then 0
        positive = make_sigmas(config.steps - 1, config.sigma_min, config.sigma_max, config.schedule, config.rho)
        grid = torch.cat([positive, positive.new_zeros(1)])
    else:
        grid = make_sigmas(config.steps, config.sigma_min, config.sigma_max, config.schedule, config.rho)
    if len(grid) != config.steps + 1:
        raise ValueError(f"sigmas has {len(grid)} entries; nfe={config.nfe} needs {config.steps + 1}")
    if ends and float(grid[-1]) != 0.0:
        raise ValueError(f"with learn_ends=True the grid must end with 0 (the last step denoises fully); got {float(grid[-1]):g}")
    sigma_max = float(grid[0])
    start_scale = config.start_scale or (1.0 + sigma_max if prediction_type == "flow" else sigma_max)

    sigma_min = float(grid[-1])
    raw = init_raw_coefficients(config.steps, config.gamma_init, config.gamma_max)
    if config.solver == "multistep":
        raw = init_multistep_raw(grid, config.multistep_start, raw[:, 0])
    end_logits = None
    if ends:
        assert model_sigma_range is not None
        end_logits = end_logits_for(float(grid[0]), float(grid[-2]), *model_sigma_range).to(torch.float32)
        grid_logits = logits_for_grid(grid[:-1]).to(torch.float32)
    else:
        grid_logits = logits_for_grid(grid).to(torch.float32) if config.learn_grid else None
    fingerprint = model_fingerprint or fingerprint_or_none(denoiser)

    def metadata_now() -> CoefficientMetadata:
        """The file's metadata for the current parameters (checked on construction, as the loader does)."""
        learned = None if grid_logits is None else [float(v) for v in grid_logits.detach().cpu()]
        record = None if end_logits is None else _ends_record(end_logits, model_sigma_range)  # type: ignore[arg-type]
        return _file_metadata(config, current_grid(), sigmas is not None, model=model, prediction_type=prediction_type,
                              guidance_scale=guidance_scale, model_fingerprint=fingerprint, grid_ends=record,
                              grid_logits=learned)

    def current_grid() -> torch.Tensor:
        """The grid now (float64 host table): the learned one, or the fixed one."""
        if grid_logits is None:
            return grid
        logits = grid_logits.detach().cpu().to(torch.float64)
        if end_logits is not None:
            return grid_with_ends(logits, end_logits.detach().cpu().to(torch.float64), *model_sigma_range)  # type: ignore[misc]
        return grid_from_logits(logits, sigma_max, sigma_min)

    losses: list[float] = []
    start_it = 0
    ckpt = _checkpoint_path(os.fspath(output)) if output is not None else None
    loaded = _load_checkpoint(ckpt, config) if (ckpt is not None and resume) else None
    if loaded is not None:
        tensors, meta = loaded
        raw = tensors["raw"].clone()
        if grid_logits is not None:
            grid_logits = tensors["grid_logits"].clone()
        if end_logits is not None:
            end_logits = tensors["ends_logits"].clone()
        start_it = int(meta["iteration"])
        losses = list(meta.get("losses", []))[:start_it]
    metadata_now()  # a setting no file may hold fails here, before minutes of training
    raw.requires_grad_(True)
    opt = torch.optim.Adam([raw], lr=config.lr)
    grid_opt = None
    if grid_logits is not None:
        grid_logits.requires_grad_(True)
        groups = [{"params": [grid_logits], "scale": 1.0}]
        if end_logits is not None:
            groups.append({"params": [end_logits.requires_grad_(True)], "scale": ENDS_STEP_SCALE})
        grid_opt = torch.optim.Adam(groups, lr=config.grid_lr)
    if loaded is not None:
        for prefix, param, optimizer in (("", raw, opt), ("grid_", grid_logits, grid_opt), ("ends_", end_logits, grid_opt)):
            if optimizer is not None and param is not None and prefix + "exp_avg" in tensors:
                optimizer.state[param] = {
                    "step": torch.tensor(meta[prefix + "adam_step"]),
                    "exp_avg": tensors[prefix + "exp_avg"].clone(),
                    "exp_avg_sq": tensors[prefix + "exp_avg_sq"].clone(),
                }

    dev = sample_noise(1, torch.Generator().manual_seed(0)).device  # the model's device, as the caller chose it
    grid_on_dev = grid.to(torch.float32).to(dev)
    fine_on_dev = refine_sigmas(grid, config.teacher_factor).to(torch.float32).to(dev)
    if ends:  # the reference: from the model's top to its lowest sigma, then to 0; it ignores the student's grid
        lo, hi = model_sigma_range  # type: ignore[misc]
        if teacher_sigmas is not None:
            if teacher_sigmas.ndim != 1 or len(teacher_sigmas) < 2 or float(teacher_sigmas[-1]) != 0.0:
                raise ValueError("teacher_sigmas must be a decreasing grid ending at 0 (a pipeline's reference schedule)")
            teacher_grid = teacher_sigmas.detach().to(torch.float32).to(dev)
        else:
            teacher_grid = reference_grid(config.teacher_factor * config.steps, lo, hi).to(torch.float32).to(dev)

    def batch(iteration: int, stream: int) -> tuple[torch.Tensor, torch.Generator]:
        z = sample_noise(local_bs, _generator_like(dev, _seed(config.seed, iteration, rank, stream)))
        return z.to(torch.float32) * start_scale, _generator_like(dev, _seed(config.seed, iteration, rank, stream + 1))

    def reference_batch(iteration: int, stream: int) -> tuple[torch.Tensor, torch.Tensor, torch.Generator]:
        """Unit noise, its reference output and the churn generator of one batch (learned ends)."""
        z = sample_noise(local_bs, _generator_like(dev, _seed(config.seed, iteration, rank, stream))).to(torch.float32)
        g = _generator_like(dev, _seed(config.seed, iteration, rank, stream + 1))
        return z, reference_teacher(denoiser, z, teacher_grid), g

    t_pool = time.perf_counter()
    pool = [reference_batch(-2 - k, 0) for k in range(config.teacher_pool)] if ends else []
    pool_seconds = time.perf_counter() - t_pool  # part of the run's time: the teacher's calls are paid here

    def ends_loss(iteration: int, stream: int, inner: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
        """The last-step loss of the grid ``(inner, end)`` on the batch of ``iteration`` (learned ends)."""
        z, target, g = pool[iteration % len(pool)] if (pool and iteration >= 0) else reference_batch(iteration, stream)
        sigmas_now = grid_with_ends(inner.to(dev), end.to(dev), lo, hi)
        out = final_state(denoiser, z * sigmas_now[0], sigmas_now, raw, config, g)
        return config.last_step_weight * feature_loss(out, target)

    learns_weights = config.solver == "multistep"  # the only form with coefficients that act at gamma_max = 0

    def fd_gradient(iteration: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Loss and central-difference gradients (interior, ends) at the current grid, on one batch; with
        ``learns_weights`` also the raw coefficients' gradient by autograd (else ``None``)."""
        theta = torch.cat([grid_logits.detach(), end_logits.detach()])  # type: ignore[union-attr]
        n_inner = grid_logits.numel()  # type: ignore[union-attr]
        raw_grad = None
        if learns_weights:  # the multistep weights by autograd at the centre (their gradient does not need d/dsigma)
            with torch.enable_grad():
                loss = ends_loss(iteration, 0, theta[:n_inner], theta[n_inner:])
                (raw_grad,) = torch.autograd.grad(loss, raw)
            loss = loss.detach()
        with torch.no_grad():
            if raw_grad is None:
                loss = ends_loss(iteration, 0, theta[:n_inner], theta[n_inner:])
            grad = torch.zeros_like(theta)
            for k in range(len(theta)):
                h = config.grid_fd_step * (1.0 if k < n_inner else ENDS_STEP_SCALE)
                step = torch.zeros_like(theta)
                step[k] = h
                up, down = theta + step, theta - step
                grad[k] = (ends_loss(iteration, 0, up[:n_inner], up[n_inner:])
                           - ends_loss(iteration, 0, down[:n_inner], down[n_inner:])) / (2 * h)
        return loss, grad[:n_inner], grad[n_inner:], raw_grad

    def evaluate(iteration: int, stream: int, with_grad: bool,
                 last_term: list[torch.Tensor] | None = None) -> torch.Tensor:
        if ends:
            with torch.set_grad_enabled(with_grad):
                return ends_loss(iteration, stream, grid_logits, end_logits)  # type: ignore[arg-type]
        x, g = batch(iteration, stream)
        if grid_logits is None:
            teacher = teacher_trajectory(denoiser, x, grid, config.teacher_factor, fine_on_dev)
            with torch.set_grad_enabled(with_grad):
                return trajectory_loss(denoiser, x, grid_on_dev, raw, teacher, config, g, feature_loss)
        # a learned grid: the teacher follows the current grid
        host = current_grid()
        fine = refine_sigmas(host, config.teacher_factor).to(torch.float32).to(dev)
        teacher = teacher_trajectory(denoiser, x, host, config.teacher_factor, fine)
        with torch.set_grad_enabled(with_grad):
            sigmas_now = grid_from_logits(grid_logits.to(dev), sigma_max, sigma_min)
            return trajectory_loss(denoiser, x, sigmas_now, raw, teacher, config, g, feature_loss, last_term)

    # loss of the untrained coefficients on a fixed held-out batch, for the log and the report
    with torch.no_grad():
        initial = evaluate(-1, 10, False).detach() * (local_bs / config.batch_size)
    initial_loss = float(_sum_across(initial.reshape(1).cpu(), state))

    best: tuple[float, torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # keep_best: (loss, interior, ends, raw)
    log = open(log_path, "a") if (log_path is not None and main) else None
    bar = tqdm(range(start_it, config.iterations), disable=not (progress and main), desc=f"AdaSDE NFE={config.nfe}")
    t0 = time.perf_counter()
    try:
        for it in bar:
            lr = config.lr * 0.5 * (1.0 + math.cos(math.pi * it / config.iterations))
            for group in opt.param_groups:
                group["lr"] = lr
            opt.zero_grad(set_to_none=False)
            if grid_opt is not None:
                for group in grid_opt.param_groups:
                    group["lr"] = config.grid_lr * lr / config.lr * group["scale"]
                grid_opt.zero_grad(set_to_none=False)
            last: list[torch.Tensor] = []
            share = local_bs / config.batch_size
            if config.grid_fd_step:  # the grid by central differences (multistep weights: autograd)
                local, inner_grad, ends_grad, raw_grad = fd_gradient(it)
                raw.grad = torch.zeros_like(raw) if raw_grad is None else raw_grad * share
                grid_logits.grad = inner_grad * share  # type: ignore[union-attr]
                end_logits.grad = ends_grad * share  # type: ignore[union-attr]
            elif grid_logits is not None and not ends and config.step_weight > 0:
                local = evaluate(it, 0, True, last)
                # the grid from the last-step term, the coefficients from the whole loss
                (grid_grad,) = torch.autograd.grad(last[0] * share, grid_logits, retain_graph=True)
                (local * share).backward(inputs=[raw])
                grid_logits.grad = grid_grad
            else:
                local = evaluate(it, 0, True, last)
                (local * share).backward()
            for param in (raw, grid_logits, end_logits):
                if param is None:
                    continue
                if param.grad is None:
                    param.grad = torch.zeros_like(param)
                param.grad.copy_(_sum_across(param.grad.detach().cpu(), state))
            loss_value = float(_sum_across((local.detach() * (local_bs / config.batch_size)).reshape(1).cpu(), state))
            if config.keep_best and (best is None or loss_value < best[0]):  # the loss of the parameters before this step
                best = (loss_value, grid_logits.detach().clone(), end_logits.detach().clone(),  # type: ignore[union-attr]
                        raw.detach().clone())
            opt.step()
            if grid_opt is not None:
                grid_opt.step()
                if end_logits is not None:  # a file holds end logits within +-MAX_END_LOGIT (always a valid grid)
                    with torch.no_grad():
                        end_logits.clamp_(-MAX_END_LOGIT, MAX_END_LOGIT)
            losses.append(loss_value)
            bar.set_postfix(loss=f"{loss_value:.4g}", lr=f"{lr:.3g}")
            if log is not None:
                entry = {"iteration": it, "loss": loss_value, "lr": lr, "time": time.perf_counter() - t0}
                if end_logits is not None:
                    entry["grid"] = [round(float(v), 4) for v in current_grid()]
                log.write(json.dumps(entry) + "\n")
                log.flush()
            if ckpt is not None and main and ((it + 1) % config.checkpoint_every == 0 or it + 1 == config.iterations):
                _save_checkpoint(ckpt, raw, opt, it + 1, config, losses, grid_logits, grid_opt, end_logits)
    finally:
        if log is not None:
            log.close()
    if best is not None:
        with torch.no_grad():  # the last step's grid was never evaluated: one more rollout settles it
            last_loss = float(ends_loss(config.iterations, 0, grid_logits, end_logits))  # type: ignore[arg-type]
        if best[0] < last_loss:
            with torch.no_grad():
                grid_logits.copy_(best[1])  # type: ignore[union-attr]
                end_logits.copy_(best[2])  # type: ignore[union-attr]
                raw.copy_(best[3])
    seconds = time.perf_counter() - t0 + pool_seconds

    training = {k: v for k, v in attrs.asdict(config).items() if k not in ("nfe", "solver", "analytic_first_step", "gamma_max")}
    training.update(final_loss=losses[-1] if losses else None, initial_loss=initial_loss, processes=world, seconds=seconds)
    meta = attrs.evolve(metadata_now(), training=training)
    final_grid = meta.learned_grid if meta.learned_grid is not None else current_grid()
    # a learned grid is exactly the one the metadata's logits give, as the loader checks
    cf = CoefficientFile(raw.detach().cpu().clone(), final_grid, meta)
    if output is not None and main:
        save_coefficients(output, cf.raw, cf.sigmas, meta)
    return DistillResult(cf, losses, initial_loss, seconds, start_it)
