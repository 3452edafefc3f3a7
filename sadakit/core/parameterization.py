"""One language for every denoiser: conversions between model space and the common forms.

The original design (docs/design.md section 1) named the VE form ``x = x0 + sigma * noise`` as the common
language. Its state and time are infinite at the noisy end of a flow-matching schedule
(t -> 1 gives sigma -> inf), where Flux starts. SADA's criterion and extrapolation therefore
run in the *flow* chart of the same ODE, which is finite on the closed interval:

    tau = sigma / (1 + sigma) in [0, 1],   x_flow = x_ve / (1 + sigma) = (1 - tau) x0 + tau eps,
    drift dx_flow/dtau = eps - x0 = (x_flow - x0) / tau.

Both charts describe the same probability-flow ODE (DDIM is Euler in the flow chart), so a
criterion computed in one is a criterion on the other's trajectory. The VE helpers below are
kept for AdaSDE and for tests; every function avoids the divisions that blow up at the ends
of a schedule (alphas_cumprod -> 0, t -> 1, t -> 0).

Every per-call coefficient is computed in float32 on the input's device; callers cast back.
Schedule tables are computed in float64 on the CPU once and reach a device only as float32
(:class:`HostTable`): Apple's MPS has no float64 and consumer GPUs run it many times slower.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch.utils.weak import WeakIdKeyDictionary

PredictionType = Literal["epsilon", "v_prediction", "sample", "flow"]
_TINY = 1e-12


# --------------------------------------------------------------------------------------
# Scalar conversions between charts (float64-friendly, used by tests and AdaSDE)
# --------------------------------------------------------------------------------------


def vp_alpha_sigma(alphas_cumprod: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sqrt(ab), sqrt(1 - ab)): the VP signal and noise scales."""
    ab = alphas_cumprod.clamp(0.0, 1.0)
    return ab.sqrt(), (1.0 - ab).sqrt()


def vp_to_ve_sigma(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """sigma = sqrt((1 - ab) / ab); +inf where ab == 0 (pure noise)."""
    a, s = vp_alpha_sigma(alphas_cumprod)
    return torch.where(a > 0, s / a.clamp_min(_TINY), torch.full_like(a, math.inf))


def ve_sigma_to_tau(sigma: torch.Tensor) -> torch.Tensor:
    """Flow time tau = sigma / (1 + sigma), exact at sigma = 0 and sigma = inf."""
    return torch.where(torch.isinf(sigma), torch.ones_like(sigma), sigma / (1.0 + sigma))


def tau_to_ve_sigma(tau: torch.Tensor) -> torch.Tensor:
    """sigma = tau / (1 - tau); +inf at tau == 1."""
    return torch.where(tau >= 1.0, torch.full_like(tau, math.inf), tau / (1.0 - tau).clamp_min(_TINY))


def vp_state_to_flow(x_vp: torch.Tensor, alphas_cumprod: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_flow, tau) from a VP state; x_flow = x_vp / (a + s), tau = s / (a + s)."""
    a, s = vp_alpha_sigma(alphas_cumprod)
    denom = a + s  # >= 1 on the whole schedule: no division problem at either end
    return x_vp / denom, s / denom


def flow_state_to_ve(x_flow: torch.Tensor, tau: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_ve, sigma) from the flow chart; infinite at tau == 1 by nature of the VE chart."""
    sigma = tau_to_ve_sigma(tau)
    return x_flow / (1.0 - tau).clamp_min(_TINY), sigma


def ve_state_to_flow(x_ve: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x_ve / (1.0 + sigma), ve_sigma_to_tau(sigma)


def flow_drift(x_flow: torch.Tensor, x0: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """dx_flow/dtau = (x_flow - x0) / tau; tau > 0 on every denoiser call."""
    return (x_flow - x0) / tau.clamp_min(1e-8)


# --------------------------------------------------------------------------------------
# Model-space parameterisations
# --------------------------------------------------------------------------------------


def vp_log_sigma(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """The VE ``log sigma`` of every DDPM step, float64 on the CPU: the one table SADA's VP
    parameterisation and AdaSDE's model chart both interpolate (finite even at ab = 0).

    The schedule is read to the host first (img2img pipelines move ``alphas_cumprod`` to the
    sample's device), so the float64 math never runs on a device.
    """
    ab = torch.as_tensor(alphas_cumprod).detach().cpu().to(torch.float64).clamp(1e-20, 1.0)
    return 0.5 * torch.log((1.0 - ab).clamp_min(1e-30) / ab)


class HostTable:
    """A table computed in float64 on the CPU, handed to each device as float32 (cached).

    The float64 values stay on the host; a device receives one float32 copy, converted on the
    host before the transfer, so no float64 tensor is ever created on it.
    """

    def __init__(self, values: torch.Tensor) -> None:
        self.float64 = values.detach().cpu().to(torch.float64)
        self._on: dict[torch.device, torch.Tensor] = {}

    def on(self, device: torch.device | str) -> torch.Tensor:
        device = torch.device(device)
        table = self._on.get(device)
        if table is None:
            table = self._on[device] = self.float64.to(torch.float32).to(device)
        return table


_LOG_SIGMA_TABLES: WeakIdKeyDictionary = WeakIdKeyDictionary()


def log_sigma_table(alphas_cumprod: torch.Tensor) -> HostTable:
    """:func:`vp_log_sigma` as a :class:`HostTable`, kept as long as the ``alphas_cumprod`` tensor lives.

    SADA builds its parameterisation at every generation from the scheduler's own tensor; keyed
    on that tensor (and its version, so an in-place change is seen), the float64 table is
    computed once and its device copies are reused, without reading the schedule back from a
    device at every generation.
    """
    ab = torch.as_tensor(alphas_cumprod)
    version = -1 if ab.is_inference() else ab._version  # inference tensors keep no version counter
    cached = _LOG_SIGMA_TABLES.get(ab)
    if cached is not None and cached[0] == version:
        return cached[1]
    table = HostTable(vp_log_sigma(ab))
    _LOG_SIGMA_TABLES[ab] = (version, table)
    return table


@dataclass(frozen=True)
class NoiseLevel:
    """Per-call coefficients relating model space to the flow chart (float32 tensors).

    ``x_flow = in_scale * x_model``; ``tau`` is the flow time. ``a``/``s`` are the VP
    (or EDM) scales used by the output conversions.
    """

    tau: torch.Tensor
    in_scale: torch.Tensor
    a: torch.Tensor
    s: torch.Tensor


class Parameterization(abc.ABC):
    """How one denoiser's (input, timestep, output) map to (tau, x_flow, x0).

    Subclasses implement ``level``, ``x0_from_output`` and ``output_from_x0``; they must be
    exact inverses of each other for a fixed input (tested round-trip).
    """

    prediction_type: str = "epsilon"

    @abc.abstractmethod
    def level(self, timestep: torch.Tensor | float, device: torch.device) -> NoiseLevel:
        """Per-call coefficients for ``timestep``, computed on ``device`` without host reads."""

    @abc.abstractmethod
    def x0_from_output(self, x_model: torch.Tensor, output: torch.Tensor, lvl: NoiseLevel) -> torch.Tensor:
        """The clean-sample estimate implied by the model's output."""

    @abc.abstractmethod
    def output_from_x0(self, x_model: torch.Tensor, x0: torch.Tensor, lvl: NoiseLevel) -> torch.Tensor:
        """The model output that would imply ``x0`` (inverse of ``x0_from_output``)."""

    def describe(self) -> str:
        return f"{type(self).__name__}({self.prediction_type})"


def _as_time(timestep: torch.Tensor | float, device: torch.device) -> torch.Tensor:
    """First element of a (possibly batched) timestep as a float32 device scalar; no host read.

    A host value (Python or numpy float) becomes float32 before it reaches the device: numpy's
    float64 would otherwise become a float64 device tensor.
    """
    if not torch.is_tensor(timestep):
        timestep = torch.as_tensor(timestep, dtype=torch.float32)
    t = torch.as_tensor(timestep, device=device)
    return t.reshape(-1)[0].to(torch.float32)


class VPParameterization(Parameterization):
    """Variance-preserving models (SD, SDXL, MusicLDM): eps, v or sample prediction.

    ``alphas_cumprod`` is the training schedule; fractional timesteps (Euler/Karras sigmas)
    are interpolated linearly in log-sigma, the inverse of diffusers' ``_sigma_to_t``.
    ``continuous_log_sigma=True`` handles diffusers' ``timestep_type="continuous"`` where the
    model receives ``0.25 * log(sigma)``.
    """

    def __init__(
        self,
        alphas_cumprod: torch.Tensor,
        prediction_type: str = "epsilon",
        continuous_log_sigma: bool = False,
    ) -> None:
        if prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(
                f"prediction_type={prediction_type!r} is not a VP prediction type; "
                "allowed: 'epsilon', 'v_prediction', 'sample'"
            )
        self.prediction_type = prediction_type
        self.continuous_log_sigma = continuous_log_sigma
        self._table = log_sigma_table(alphas_cumprod)

    def _log_sigma_on(self, device: torch.device) -> torch.Tensor:
        """The float32 log-sigma table on ``device`` (float64 only on the host, built once)."""
        return self._table.on(device)

    def level(self, timestep: torch.Tensor | float, device: torch.device) -> NoiseLevel:
        t = _as_time(timestep, device)
        if self.continuous_log_sigma:
            log_sigma = 4.0 * t
        else:
            table = self._log_sigma_on(device)
            t = t.clamp(0, table.numel() - 1)
            lo = t.floor().long()
            hi = (lo + 1).clamp(max=table.numel() - 1)
            w = t - lo.to(t.dtype)
            # index_select with a 1-element index: indexing with a 0-d tensor reads it to the host
            lo_hi = torch.stack([lo, hi]).reshape(2)
            pair = table.index_select(0, lo_hi)
            log_sigma = (pair[0] * (1 - w) + pair[1] * w).reshape(t.shape)
        # a = 1/sqrt(1+sigma^2), s = sigma/sqrt(1+sigma^2), written to stay finite at both ends
        a = torch.sigmoid(-2.0 * log_sigma).sqrt()
        s = torch.sigmoid(2.0 * log_sigma).sqrt()
        denom = a + s
        return NoiseLevel(tau=s / denom, in_scale=1.0 / denom, a=a, s=s)

    def level_at_ve_sigma(self, sigma: torch.Tensor) -> NoiseLevel:
        """The level of the VE noise ``sigma`` (the model input is then ``x_ve / sqrt(1 + sigma^2)``)."""
        a = torch.rsqrt(1.0 + sigma * sigma)
        s = sigma * a
        return NoiseLevel(tau=s / (a + s), in_scale=1.0 / (a + s), a=a, s=s)

    def x0_from_output(self, x_model, output, lvl):
        if self.prediction_type == "epsilon":
            return (x_model - lvl.s * output) / lvl.a.clamp_min(1e-8)
        if self.prediction_type == "v_prediction":
            return lvl.a * x_model - lvl.s * output
        return output

    def output_from_x0(self, x_model, x0, lvl):
        if self.prediction_type == "epsilon":
            return (x_model - lvl.a * x0) / lvl.s.clamp_min(1e-8)
        if self.prediction_type == "v_prediction":
            eps = (x_model - lvl.a * x0) / lvl.s.clamp_min(1e-8)
            return lvl.a * eps - lvl.s * x0
        return x0


class FlowParameterization(Parameterization):
    """Flow matching (Flux): ``x_t = (1 - t) x0 + t noise``, the model predicts ``noise - x0``.

    ``timestep_scale`` maps what the denoiser receives to t in [0, 1] (Flux's transformer
    receives ``t``; a model fed ``1000 t`` uses 1e-3).
    """

    prediction_type = "flow"

    def __init__(self, timestep_scale: float = 1.0) -> None:
        if not timestep_scale > 0:
            raise ValueError(f"timestep_scale must be > 0, got {timestep_scale}")
        self.timestep_scale = float(timestep_scale)

    def level(self, timestep, device):
        tau = (_as_time(timestep, device) * self.timestep_scale).clamp(0.0, 1.0)
        one = torch.ones_like(tau)
        return NoiseLevel(tau=tau, in_scale=one, a=1.0 - tau, s=tau)

    def level_at_ve_sigma(self, sigma: torch.Tensor) -> NoiseLevel:
        """The level of the VE noise ``sigma`` (the model input is then ``x_ve / (1 + sigma)``)."""
        tau = sigma / (1.0 + sigma)
        return NoiseLevel(tau=tau, in_scale=torch.ones_like(tau), a=1.0 - tau, s=tau)

    def x0_from_output(self, x_model, output, lvl):
        return x_model - lvl.tau * output

    def output_from_x0(self, x_model, x0, lvl):
        return (x_model - x0) / lvl.tau.clamp_min(1e-8)


class EDMParameterization(Parameterization):
    """EDM preconditioning as diffusers' EDM schedulers apply it (``c_noise = log(sigma)/4``).

    ``x0 = c_skip x_ve + c_out F`` with the model fed ``c_in x_ve``; the sign convention of
    ``c_out`` follows ``EDMEulerScheduler.precondition_outputs``.
    """

    def __init__(self, sigma_data: float = 0.5, prediction_type: str = "epsilon") -> None:
        if prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(
                f"EDM prediction_type={prediction_type!r} is not supported; allowed: 'epsilon', 'v_prediction'"
            )
        self.sigma_data = float(sigma_data)
        self.prediction_type = prediction_type

    def level(self, timestep, device):
        sigma = torch.exp(4.0 * _as_time(timestep, device))
        sd = self.sigma_data
        norm = torch.sqrt(sigma**2 + sd**2)
        c_in = 1.0 / norm
        tau = sigma / (1.0 + sigma)
        # a, s reused as c_skip, c_out
        c_skip = sd**2 / (sigma**2 + sd**2)
        c_out = sigma * sd / norm
        if self.prediction_type == "v_prediction":
            c_out = -c_out
        return NoiseLevel(tau=tau, in_scale=1.0 / (c_in * (1.0 + sigma)), a=c_skip, s=c_out)

    def x0_from_output(self, x_model, output, lvl):
        x_ve = x_model * lvl.in_scale * (1.0 + lvl.tau / (1.0 - lvl.tau).clamp_min(1e-8))
        return lvl.a * x_ve + lvl.s * output

    def output_from_x0(self, x_model, x0, lvl):
        x_ve = x_model * lvl.in_scale * (1.0 + lvl.tau / (1.0 - lvl.tau).clamp_min(1e-8))
        return (x0 - lvl.a * x_ve) / lvl.s


def to_flow(x_model: torch.Tensor, lvl: NoiseLevel) -> torch.Tensor:
    """Model-space state to the flow chart, in float32."""
    return x_model.to(torch.float32) * lvl.in_scale
