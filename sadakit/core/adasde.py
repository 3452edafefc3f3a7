"""AdaSDE: a few-step SDE solver with learned per-step coefficients, as plain tensor functions.

Implements the step of "Adaptive Stochastic Coefficients" (AdaSDE, NeurIPS 2025) on the
variance-exploding denoiser form used across sadakit: ``x = x0 + sigma * noise`` and a
denoiser ``D(x, sigma) ~ E[x0 | x]``; the probability-flow ODE is ``dx/dsigma = (x - D)/sigma``.

Per step n on a decreasing grid ``t_0 = sigma_max > ... > t_N = sigma_min`` four learned
scalars act (docs/design.md section 3):

1. churn:       ``th = (1 + gamma_n) t_n``,  ``xh = x_n + sqrt(th^2 - t_n^2) z``
2. direction:   ``d = (xh - D(xh, th)) / th``  (or analytically ``xh / sqrt(1 + th^2)`` at n = 0)
3. mid-point:   ``tm = t_{n+1}^r th^(1-r)``,   ``xm = xh + (tm - th) d``
4. evaluation:  ``dm = (xm - D(xm, a tm)) / tm``
5. update:      ``x_{n+1} = xh + c (t_{n+1} - th) dm``

The "plugin" form of the paper keeps only the learned churn and hands ``(xh, th)`` to an
ordinary single-step base solver (Euler, Heun, mid-point).

The "multistep" form (not in the paper; after the learned-solver methods BNS, S4S and LD3) is a
data-prediction multistep step in exponential-integrator form: one call per step, and the
update combines the current and the two previous denoised estimates with learned weights,
starting from DPM-Solver++(2M) on the same grid (``multistep_plan``).

Every step is written once, as a *plan*: a Python generator that yields the evaluation
requests ``(x, sigma)`` it needs and receives ``D(x, sigma)`` back. ``sample_adasde`` drives a
plan with a denoiser; the diffusers scheduler drives the very same plan one model call at a
time (a pipeline owns the loop there). One implementation, no drift between the two.

Numerics: the state and every coefficient are float32 whatever the model dtype (fp16/bf16
models lose the few-step update otherwise); results are cast back to the input's dtype. No
device is named: every tensor is created on the input's device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import torch

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``D(x, sigma) -> x0`` in the VE form; ``sigma`` is a 0-d float32 tensor on ``x.device``."""

GeneratorLike = torch.Generator | Sequence[torch.Generator] | None
BaseSolver = Literal["adasde", "euler", "heun", "midpoint", "multistep"]
BASE_SOLVERS: tuple[str, ...] = ("adasde", "euler", "heun", "midpoint", "multistep")
SCHEDULES: tuple[str, ...] = ("karras", "loglinear", "time_uniform")

GAMMA_MIN = 2e-4
"""Lower end of the learned churn: a stochastic solver keeps a little noise at every step."""
N_COEFFS = 4
"""Raw parameters per step, columns in this order: gamma, r, time scale a, direction scale c.

The multistep form reads the same four columns as: gamma, the weight of ``D_n - D_{n-1}`` and of
``D_n - D_{n-2}`` (each as a bounded offset from DPM-Solver++(2M)'s), and the step's exponent
scale (``multistep_weights``)."""
MULTISTEP_HISTORY = 2
"""Previous denoised estimates a multistep step may use (with the current one: K = 3)."""
MULTISTEP_WEIGHT_BOUND = 4.0
"""A multistep weight moves at most this far from DPM-Solver++(2M)'s: ``4 tanh(p / 4)``."""

# A plan yields (x, sigma) requests, receives denoised tensors, returns the new state.
Plan = Generator[tuple[torch.Tensor, torch.Tensor], torch.Tensor, torch.Tensor]


# --------------------------------------------------------------------------------------
# Coefficients: raw parameters and their squashing to safe ranges
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepCoefficients:
    """Squashed coefficients for one step (0-d float32 tensors, differentiable)."""

    gamma: torch.Tensor
    r: torch.Tensor
    a: torch.Tensor
    c: torch.Tensor
    raw: torch.Tensor | None = None
    """The step's raw row ``(4,)``: the multistep form squashes columns 1-3 itself (``multistep_weights``)."""


def init_raw_coefficients(steps: int, gamma_init: float = 0.05, gamma_max: float = 0.3) -> torch.Tensor:
    """Raw parameters ``(steps, 4)`` of the untrained solver: r = 1/2, a = c = 1, gamma ~ gamma_init.

    The untrained solver is the geometric mid-point (DPM-Solver-2 style) step with a small
    churn, a sound starting point that distillation only has to refine.
    """
    if steps < 1:
        raise ValueError(f"steps={steps} must be >= 1")
    raw = torch.zeros(steps, N_COEFFS, dtype=torch.float32)
    if gamma_max > GAMMA_MIN:
        frac = min(max((gamma_init - GAMMA_MIN) / (gamma_max - GAMMA_MIN), 1e-4), 1 - 1e-4)
        raw[:, 0] = math.log(frac / (1.0 - frac))
    return raw


def squash(raw: torch.Tensor, gamma_max: float) -> list[StepCoefficients]:
    """Map raw per-step parameters ``(steps, 4)`` to the safe ranges of docs/design.md section 3.

    ``r = sigmoid(p)`` keeps the mid-point inside the step; ``c = 1 + 0.05 tanh(p/2)`` and
    ``a = 1 + 0.2 tanh(p/2)`` only correct the direction and the evaluation time a little;
    ``gamma = 2e-4 + (gamma_max - 2e-4) sigmoid(p)`` bounds the churn, and ``gamma_0 = 0``
    because the first state is already pure noise. ``gamma_max = 0`` is the deterministic
    solver (every gamma exactly 0), the ablation that isolates what the noise contributes.
    """
    if raw.ndim != 2 or raw.shape[1] != N_COEFFS:
        raise ValueError(f"raw coefficients must have shape (steps, {N_COEFFS}); got {tuple(raw.shape)}")
    if gamma_max < 0:
        raise ValueError(f"gamma_max={gamma_max} must be >= 0 (0 = deterministic solver)")
    raw = raw.to(torch.float32)
    out = []
    for n in range(raw.shape[0]):
        p_g, p_r, p_a, p_c = raw[n].unbind()
        if n == 0 or gamma_max == 0.0:
            gamma = torch.zeros((), dtype=torch.float32, device=raw.device)  # constant: no noise drawn
        else:
            lo = min(GAMMA_MIN, gamma_max)
            gamma = lo + (gamma_max - lo) * torch.sigmoid(p_g)
        out.append(
            StepCoefficients(
                gamma=gamma,
                r=torch.sigmoid(p_r),
                a=1.0 + 0.2 * torch.tanh(p_a / 2.0),
                c=1.0 + 0.05 * torch.tanh(p_c / 2.0),
                raw=raw[n],
            )
        )
    return out


# --------------------------------------------------------------------------------------
# Schedules and small helpers (k-diffusion vocabulary)
# --------------------------------------------------------------------------------------


def make_sigmas(
    steps: int,
    sigma_min: float,
    sigma_max: float,
    schedule: str = "karras",
    rho: float = 7.0,
) -> torch.Tensor:
    """Decreasing grid of ``steps + 1`` sigmas from ``sigma_max`` to ``sigma_min`` (float64, CPU).

    ``karras``: uniform in ``sigma^(1/rho)`` (Karras et al. 2022, eq. 5); ``loglinear``:
    uniform in ``log sigma``; ``time_uniform``: uniform in ``log log(1 + sigma^2)`` like the
    AdaSDE/AMED code base. The grid is float64 so that finer teacher grids nest exactly.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule={schedule!r} is not known; allowed: {', '.join(SCHEDULES)}")
    if steps < 1:
        raise ValueError(f"steps={steps} must be >= 1")
    if not 0.0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max; got sigma_min={sigma_min}, sigma_max={sigma_max}")
    u = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    if schedule == "karras":
        lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
        s = (hi + u * (lo - hi)) ** rho
    elif schedule == "loglinear":
        s = torch.exp(math.log(sigma_max) + u * (math.log(sigma_min) - math.log(sigma_max)))
    else:
        lo, hi = math.log(math.log1p(sigma_min**2)), math.log(math.log1p(sigma_max**2))
        s = torch.sqrt(torch.expm1(torch.exp(hi + u * (lo - hi))))
    s[0], s[-1] = sigma_max, sigma_min
    return s


def refine_sigmas(sigmas: torch.Tensor, factor: int, rho: float = 7.0) -> torch.Tensor:
    """Subdivide every interval of a grid into ``factor`` pieces, uniform in ``sigma^(1/rho)``.

    The refined grid contains every original node (index ``factor * n``), so a teacher on it
    can be compared with the student at matching sigmas whatever the student's schedule.
    """
    if factor < 1:
        raise ValueError(f"factor={factor} must be >= 1")
    s = sigmas.detach().cpu().to(torch.float64)  # a host-side table: float64 never on a device
    w = s ** (1.0 / rho)
    u = torch.arange(factor, dtype=torch.float64) / factor
    parts = [(w[i] + u * (w[i + 1] - w[i])) ** rho for i in range(len(s) - 1)]
    out = torch.cat(parts + [s[-1:]])
    out[::factor] = s
    return out


def to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """Probability-flow drift ``dx/dsigma = (x - D(x, sigma)) / sigma``."""
    return (x - denoised) / sigma


def analytic_first_direction(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """AFS: at pure noise ``D ~ E[x0] ~ 0`` and ``x ~ sigma * z`` so ``d ~ x / sqrt(1 + sigma^2)``.

    The ``1 + sigma^2`` (rather than ``sigma^2``) assumes unit-variance data, the convention
    of latent diffusion; it saves one network call on the first step.
    """
    return x / torch.sqrt(1.0 + sigma * sigma)


def randn_like(x: torch.Tensor, generator: GeneratorLike = None) -> torch.Tensor:
    """Standard normal noise shaped like ``x`` (float32, on ``x.device``), reproducible per seed.

    Noise is drawn on the generator's own device and moved (as diffusers' ``randn_tensor``
    does), so a CPU generator gives the same noise for a CPU or GPU sampler. A list of
    generators draws one sample per generator (per-prompt seeds).
    """
    if isinstance(generator, (list, tuple)):
        if len(generator) != x.shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {x.shape[0]}")
        return torch.cat([randn_like(x[i : i + 1], g) for i, g in enumerate(generator)])
    gen_device = generator.device if generator is not None else x.device
    z = torch.randn(x.shape, generator=generator, device=gen_device, dtype=torch.float32)
    return z.to(x.device)


def _f32(v: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(v, dtype=torch.float32, device=like.device)


# --------------------------------------------------------------------------------------
# Step plans
# --------------------------------------------------------------------------------------


def churn(
    x: torch.Tensor, sigma: torch.Tensor, gamma: torch.Tensor, generator: GeneratorLike = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Raise the noise level from ``sigma`` to ``(1 + gamma) sigma`` by adding fresh noise.

    Returns ``(xh, th)``. With ``gamma == 0`` no noise is drawn at all: the generator is not
    advanced, so the deterministic solver never depends on a seed.
    """
    th = (1.0 + gamma) * sigma
    if not gamma.requires_grad and float(gamma) == 0.0:
        return x, th
    # sqrt((1+g)^2 - 1) * sigma, written so the gradient at small gamma stays finite
    scale = sigma * torch.sqrt((gamma * (2.0 + gamma)).clamp_min(1e-20))
    return x + scale * randn_like(x, generator), th


def adasde_plan(
    x: torch.Tensor,
    t_cur: torch.Tensor,
    t_next: torch.Tensor,
    coeffs: StepCoefficients,
    generator: GeneratorLike = None,
    analytic_first_step: bool = False,
) -> Plan:
    """One AdaSDE step (docs/design.md section 3, items 1-5) as a plan of 2 (or 1, with AFS) calls."""
    xh, th = churn(x, t_cur, coeffs.gamma, generator)
    if analytic_first_step:
        d = analytic_first_direction(xh, th)
    else:
        d = to_d(xh, th, (yield xh, th))
    tm = t_next**coeffs.r * th ** (1.0 - coeffs.r)
    xm = xh + (tm - th) * d
    dm = to_d(xm, tm, (yield xm, coeffs.a * tm))
    return xh + coeffs.c * (t_next - th) * dm


def base_plan(
    solver: str,
    x: torch.Tensor,
    t_cur: torch.Tensor,
    t_next: torch.Tensor,
    gamma: torch.Tensor,
    generator: GeneratorLike = None,
    analytic_first_step: bool = False,
) -> Plan:
    """The paper's plugin form: learned churn, then one step of an ordinary base solver.

    ``euler``: one call. ``heun``: trapezoidal correction at ``t_next`` (Karras Alg. 2).
    ``midpoint``: evaluation at the geometric mid-point ``sqrt(th t_next)``. With
    ``analytic_first_step`` the first direction of the step is the AFS approximation.
    """
    if solver not in ("euler", "heun", "midpoint"):
        raise ValueError(f"solver={solver!r} is not a base solver; allowed: 'euler', 'heun', 'midpoint'")
    xh, th = churn(x, t_cur, gamma, generator)
    if analytic_first_step:
        d = analytic_first_direction(xh, th)
    else:
        d = to_d(xh, th, (yield xh, th))
    if solver == "euler":
        return xh + (t_next - th) * d
    if solver == "heun":
        x_e = xh + (t_next - th) * d
        d2 = to_d(x_e, t_next, (yield x_e, t_next))
        return xh + (t_next - th) * 0.5 * (d + d2)
    tm = torch.sqrt(th * t_next)
    xm = xh + (tm - th) * d
    dm = to_d(xm, tm, (yield xm, tm))
    return xh + (t_next - th) * dm


def multistep_weights(raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The multistep form's learned offsets and exponent scale from one raw row ``(4,)``.

    ``w1 = 4 tanh(p1 / 4)`` and ``w2 = 4 tanh(p2 / 4)`` are added to DPM-Solver++(2M)'s weights of
    ``D_n - D_{n-1}`` and ``D_n - D_{n-2}``; ``kappa = 1 + 0.5 tanh(p3 / 2)`` scales the step's
    exponent, ``x_{n+1} = (t_{n+1}/t_n)^kappa x_n + (1 - (t_{n+1}/t_n)^kappa) D_eff``. Raw zeros are
    DPM-Solver++(2M) itself; every raw value gives bounded weights.
    """
    if raw.shape != (N_COEFFS,):
        raise ValueError(f"a multistep step needs its raw row of {N_COEFFS} values; got shape {tuple(raw.shape)}")
    b = MULTISTEP_WEIGHT_BOUND
    return b * torch.tanh(raw[1] / b), b * torch.tanh(raw[2] / b), 1.0 + 0.5 * torch.tanh(raw[3] / 2.0)


def dpm_solver_2m_weight(sigma_prev: torch.Tensor, sigma_cur: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
    """DPM-Solver++(2M)'s weight of ``D_n - D_{n-1}``: ``1 / (2 r)``, ``r = h_{n-1} / h_n`` in log sigma.

    ``sigma_prev`` and ``sigma_cur`` are where the two estimates were evaluated. A step to sigma 0
    (infinite ``h_n``) is first order, weight 0, as diffusers' DPM-Solver++ ends at ``final_sigmas_type="zero"``.
    """
    if float(sigma_next.detach()) == 0.0:
        return torch.zeros_like(sigma_cur)
    r = torch.log(sigma_prev / sigma_cur) / torch.log(sigma_cur / sigma_next)
    return 0.5 / r


def init_multistep_raw(sigmas: torch.Tensor, start: str = "dpm++2m", gamma_raw: torch.Tensor | None = None) -> torch.Tensor:
    """Raw ``(steps, 4)`` of the untrained multistep form on ``sigmas``: DPM-Solver++(2M), or Euler.

    ``dpm++2m`` is raw zeros. ``euler`` sets each step's offset to minus 2M's weight on this grid
    (without churn), so the untrained step is ``x_{n+1} = (t_{n+1}/t_n) x_n + (1 - t_{n+1}/t_n) D_n``,
    which is exactly the Euler step. ``gamma_raw`` (``(steps,)``) fills the churn column.
    """
    if start not in ("dpm++2m", "euler"):
        raise ValueError(f"start={start!r} is not known; allowed: 'dpm++2m', 'euler'")
    s = sigmas.detach().cpu().to(torch.float64)
    steps = len(s) - 1
    raw = torch.zeros(steps, N_COEFFS, dtype=torch.float32)
    if gamma_raw is not None:
        raw[:, 0] = gamma_raw.to(torch.float32)
    if start == "euler":
        b = MULTISTEP_WEIGHT_BOUND
        for n in range(1, steps):
            w = float(dpm_solver_2m_weight(s[n - 1], s[n], s[n + 1]))
            if not abs(w) < b * (1 - 1e-6):
                raise ValueError(f"DPM-Solver++(2M)'s weight {w:.3g} at step {n} of this grid is beyond the multistep "
                                 f"form's reach (+-{b:g}): start from 'dpm++2m' or use a smoother grid")
            raw[n, 1] = b * math.atanh(-w / b)
    return raw


def multistep_effective_weights(sigmas: torch.Tensor, raw: torch.Tensor) -> list[tuple[float, float, float]]:
    """Per step ``(weight of D_n - D_{n-1}, weight of D_n - D_{n-2}, kappa)`` as they act on ``sigmas`` (no churn).

    What a file's multistep coefficients do, for ``inspect`` and the docs: 2M's weight plus the
    learned offset; 0 where an estimate does not exist yet.
    """
    s = sigmas.detach().cpu().to(torch.float64)
    out = []
    for n in range(len(s) - 1):
        off1, off2, kappa = (float(v) for v in multistep_weights(raw[n].detach().cpu().to(torch.float64)))
        w1 = float(dpm_solver_2m_weight(s[n - 1], s[n], s[n + 1])) + off1 if n >= 1 else 0.0
        out.append((w1, off2 if n >= 2 else 0.0, kappa))
    return out


def multistep_plan(
    x: torch.Tensor,
    t_cur: torch.Tensor,
    t_next: torch.Tensor,
    coeffs: StepCoefficients,
    history: list[tuple[torch.Tensor, torch.Tensor]],
    generator: GeneratorLike = None,
) -> Plan:
    """One multistep step (one call): learned churn, then the data-prediction exponential-integrator update.

    ``D_eff = D_n + (w_2M + w1) (D_n - D_{n-1}) + w2 (D_n - D_{n-2})`` (weights of estimates that do
    not exist yet are not used), ``x_{n+1} = rho x_n + (1 - rho) D_eff`` with
    ``rho = (t_{n+1} / t_n)^kappa`` (``rho = 0`` at ``t_{n+1} = 0``: the sample is ``D_eff``). The
    weights of every ``D`` sum to 1, so a constant denoiser is followed exactly. ``history`` holds
    ``(D, sigma)`` of the previous steps, most recent last; this step appends its own.
    """
    if coeffs.raw is None:
        raise ValueError("the multistep form needs StepCoefficients with their raw row (squash sets it)")
    xh, th = churn(x, t_cur, coeffs.gamma, generator)
    denoised = yield xh, th
    off1, off2, kappa = multistep_weights(coeffs.raw.to(xh.device))
    d_eff = denoised
    if history:
        d1, s1 = history[-1]
        d_eff = d_eff + (dpm_solver_2m_weight(s1, th, t_next) + off1) * (denoised - d1)
    if len(history) >= 2:
        d_eff = d_eff + off2 * (denoised - history[-2][0])
    history.append((denoised, th))
    del history[:-MULTISTEP_HISTORY]
    if float(t_next.detach()) == 0.0:
        return d_eff
    rho = torch.exp(kappa * torch.log(t_next / th))
    return rho * xh + (1.0 - rho) * d_eff


def calls_per_step(solver: str, first: bool, analytic_first_step: bool) -> int:
    """Denoiser calls of one step: the NFE bookkeeping shared by the loop and the scheduler."""
    if solver not in BASE_SOLVERS:
        raise ValueError(f"solver={solver!r} is not known; allowed: {', '.join(BASE_SOLVERS)}")
    if solver == "multistep":
        if analytic_first_step:
            raise ValueError(MULTISTEP_NO_AFS)
        return 1
    n = 1 if solver == "euler" else 2
    return n - 1 if (first and analytic_first_step) else n


MULTISTEP_NO_AFS = ("solver='multistep' has no analytic first step (its first call starts the history of denoised "
                    "estimates, and NFE = steps already): use analytic_first_step=False (command line: --no-afs)")


def count_nfe(steps: int, solver: str = "adasde", analytic_first_step: bool = True) -> int:
    """Total network calls for ``steps`` steps; AdaSDE with AFS gives ``2 steps - 1``."""
    return sum(calls_per_step(solver, n == 0, analytic_first_step) for n in range(steps))


def steps_for_nfe(nfe: int, solver: str = "adasde", analytic_first_step: bool = True) -> int:
    """Inverse of ``count_nfe``; raises when no whole number of steps gives that NFE."""
    for steps in range(1, nfe + 2):
        if count_nfe(steps, solver, analytic_first_step) == nfe:
            return steps
    raise ValueError(
        f"nfe={nfe} is not reachable with solver={solver!r}, analytic_first_step={analytic_first_step}; "
        f"reachable: {[count_nfe(s, solver, analytic_first_step) for s in range(1, 8)]}..."
    )


def solver_plan(
    x: torch.Tensor,
    sigmas: torch.Tensor,
    coeffs: Sequence[StepCoefficients],
    solver: str = "adasde",
    generator: GeneratorLike = None,
    analytic_first_step: bool = True,
    trajectory: list[torch.Tensor] | None = None,
) -> Plan:
    """The whole sampling run as one plan: every step's requests in order, returns ``x_N``.

    ``x`` is the VE starting state (``sigma_max * z``); ``sigmas`` has ``steps + 1`` entries.
    ``trajectory`` (if given) receives the state after every step (for per-step losses).
    State is float32; the caller casts back. A float64 host grid is converted on the host, then
    moved (pass a float32 grid already on ``x.device`` to save the copy, as distillation does).
    """
    steps = len(sigmas) - 1
    if len(coeffs) != steps:
        raise ValueError(f"got {len(coeffs)} step coefficients for a grid of {steps} steps")
    if solver not in BASE_SOLVERS:
        raise ValueError(f"solver={solver!r} is not known; allowed: {', '.join(BASE_SOLVERS)}")
    if solver == "multistep" and analytic_first_step:
        raise ValueError(MULTISTEP_NO_AFS)
    s = sigmas.to(torch.float32).to(x.device)
    x = x.to(torch.float32)
    history: list[tuple[torch.Tensor, torch.Tensor]] = []  # the multistep form's previous estimates
    for n in range(steps):
        afs = analytic_first_step and n == 0
        step = coeffs[n]
        if n > 0 and count_nfe(n, solver, analytic_first_step) == 0:
            # No churn before the first model call (Euler after the analytic first step): a
            # pipeline hands its generator only to ``scheduler.step``, after that call, so the
            # first call's input must be a deterministic function of the initial latents.
            step = replace(step, gamma=torch.zeros_like(step.gamma))
        if solver == "adasde":
            x = yield from adasde_plan(x, s[n], s[n + 1], step, generator, afs)
        elif solver == "multistep":
            x = yield from multistep_plan(x, s[n], s[n + 1], step, history, generator)
        else:
            x = yield from base_plan(solver, x, s[n], s[n + 1], step.gamma, generator, afs)
        if trajectory is not None:
            trajectory.append(x)
    return x


def run_plan(plan: Plan, denoiser: Denoiser) -> tuple[torch.Tensor, int]:
    """Drive a plan with a denoiser; returns ``(result, number of denoiser calls)``.

    The denoiser sees the request's state in its own dtype is the caller's business: it
    receives float32 here and may cast inside (see ``sample_adasde``).
    """
    nfe = 0
    try:
        x, sigma = next(plan)
        while True:
            nfe += 1
            x, sigma = plan.send(denoiser(x, sigma))
    except StopIteration as stop:
        return stop.value, nfe


# --------------------------------------------------------------------------------------
# Single-step functions and the sampling loop (k-diffusion style)
# --------------------------------------------------------------------------------------


def _f32_denoiser(denoiser: Denoiser, dtype: torch.dtype) -> Denoiser:
    """Call the model in its own dtype, take its answer back to float32."""

    def call(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return denoiser(x.to(dtype), sigma).to(torch.float32)

    return call


def adasde_step(
    denoiser: Denoiser,
    x: torch.Tensor,
    t_cur: torch.Tensor | float,
    t_next: torch.Tensor | float,
    coeffs: StepCoefficients,
    generator: GeneratorLike = None,
    analytic_first_step: bool = False,
) -> torch.Tensor:
    """One AdaSDE step from ``t_cur`` to ``t_next`` (float32 math, cast back to ``x.dtype``)."""
    f = _f32_denoiser(denoiser, x.dtype)
    plan = adasde_plan(x.to(torch.float32), _f32(t_cur, x), _f32(t_next, x), coeffs, generator, analytic_first_step)
    out, _ = run_plan(plan, f)
    return out.to(x.dtype)


def plugin_step(
    denoiser: Denoiser,
    x: torch.Tensor,
    t_cur: torch.Tensor | float,
    t_next: torch.Tensor | float,
    gamma: torch.Tensor | float,
    solver: str = "euler",
    generator: GeneratorLike = None,
    analytic_first_step: bool = False,
) -> torch.Tensor:
    """Learned churn in front of one Euler / Heun / mid-point step (float32, cast back)."""
    f = _f32_denoiser(denoiser, x.dtype)
    plan = base_plan(
        solver, x.to(torch.float32), _f32(t_cur, x), _f32(t_next, x), _f32(gamma, x), generator, analytic_first_step
    )
    out, _ = run_plan(plan, f)
    return out.to(x.dtype)


@dataclass
class SampleResult:
    """Final sample (input dtype), the number of denoiser calls, and the per-step states."""

    x: torch.Tensor
    nfe: int
    trajectory: list[torch.Tensor]


def sample_adasde(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    coeffs: torch.Tensor | Sequence[StepCoefficients],
    generator: GeneratorLike = None,
    analytic_first_step: bool = True,
    solver: str = "adasde",
    gamma_max: float = 0.3,
) -> SampleResult:
    """Sample with AdaSDE (or a learned-churn base solver) over ``sigmas``.

    ``x`` is the starting state at ``sigmas[0]`` in VE form (``sigma_max * z``). ``coeffs``
    is either the raw ``(steps, 4)`` parameter tensor (squashed with ``gamma_max``) or
    already squashed per-step coefficients. Counts the denoiser calls: ``2 steps - 1`` for
    AdaSDE with the analytic first step.
    """
    if isinstance(coeffs, torch.Tensor):
        coeffs = squash(coeffs.to(x.device), gamma_max)
    traj: list[torch.Tensor] = []
    plan = solver_plan(x, sigmas, coeffs, solver, generator, analytic_first_step, traj)
    out, nfe = run_plan(plan, _f32_denoiser(denoiser, x.dtype))
    return SampleResult(out.to(x.dtype), nfe, [t.to(x.dtype) for t in traj])


def sample_midpoint(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    trajectory: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Deterministic geometric mid-point (DPM-Solver-2 style) ODE solver: the teacher.

    Two calls per step, float32 state; ``trajectory`` receives the state after every step.
    """
    s = sigmas.to(torch.float32).to(x.device)
    f = _f32_denoiser(denoiser, x.dtype)
    x = x.to(torch.float32)
    zero = torch.zeros((), device=x.device)
    for n in range(len(s) - 1):
        x, _ = run_plan(base_plan("midpoint", x, s[n], s[n + 1], zero), f)
        if trajectory is not None:
            trajectory.append(x)
    return x
