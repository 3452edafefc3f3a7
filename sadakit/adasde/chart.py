"""How a pipeline's model sees a VE state ``(x, sigma)``: input scaling, timestep, output.

AdaSDE works on the VE denoiser form ``D(x, sigma)``; a diffusers model works in its own
chart (VP: scaled state and a DDPM timestep index; flow matching: ``x / (1 + sigma)`` and
``1000 tau``). The scheduler that samples and the adapter that distils must convert in
*exactly* the same way, or the coefficients are fitted to a different function than the one
they are later used with; both therefore use this one class.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ..core.parameterization import FlowParameterization, HostTable, Parameterization, VPParameterization, vp_log_sigma

#: Floor of the last ``alphas_cumprod`` of a zero-terminal-SNR schedule: diffusers' Euler
#: scheduler uses the same value, so the first sigma is large (4096) but finite.
ZERO_SNR_FLOOR = 2.0**-24
_FLOW_MARKERS = ("shift", "use_dynamic_shifting", "base_image_seq_len")
VP_PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def alphas_cumprod_from_config(
    num_train_timesteps: int = 1000,
    beta_start: float = 0.00085,
    beta_end: float = 0.012,
    beta_schedule: str = "scaled_linear",
    trained_betas: list[float] | None = None,
    rescale_betas_zero_snr: bool = False,
) -> torch.Tensor:
    """The DDPM ``alphas_cumprod`` a VP model was trained with (float64), as diffusers builds it."""
    if trained_betas is not None:
        betas = torch.tensor(trained_betas, dtype=torch.float64)
    elif beta_schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
    elif beta_schedule == "scaled_linear":
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64) ** 2
    elif beta_schedule == "squaredcos_cap_v2":
        f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
        betas = torch.tensor(
            [min(1 - f((i + 1) / num_train_timesteps) / f(i / num_train_timesteps), 0.999) for i in range(num_train_timesteps)],
            dtype=torch.float64,
        )
    else:
        raise ValueError(
            f"beta_schedule={beta_schedule!r} is not supported; allowed: 'linear', 'scaled_linear', 'squaredcos_cap_v2'"
        )
    if rescale_betas_zero_snr:
        from diffusers.schedulers.scheduling_ddim import rescale_zero_terminal_snr

        betas = rescale_zero_terminal_snr(betas)
    ab = torch.cumprod(1.0 - betas, dim=0)
    if rescale_betas_zero_snr:
        ab[-1] = ZERO_SNR_FLOOR
    return ab


def scheduler_config(scheduler: Any) -> dict[str, Any]:
    """A scheduler's (or a config mapping's) settings as a plain dict, with its class name."""
    if scheduler is None:
        return {}
    config = dict(getattr(scheduler, "config", scheduler))
    if "_class_name" not in config and hasattr(scheduler, "config"):
        config["_class_name"] = type(scheduler).__name__
    return config


def is_flow_config(config: dict[str, Any]) -> bool:
    """Flow-matching schedulers name themselves so, or carry resolution-shift settings and no betas."""
    if "FlowMatch" in str(config.get("_class_name") or ""):
        return True
    if config.get("use_flow_sigmas") or config.get("prediction_type") in ("flow_prediction", "flow"):
        return True
    if config.get("flow_matching"):  # an AdaSDEScheduler being swapped for another file
        return True
    return any(k in config for k in _FLOW_MARKERS) and "beta_schedule" not in config


class ModelChart:
    """Conversions between the VE state and one model's inputs and outputs."""

    def __init__(self, flow_matching: bool, prediction_type: str = "epsilon", alphas_cumprod: torch.Tensor | None = None) -> None:
        if not flow_matching:
            if prediction_type not in VP_PREDICTION_TYPES:
                raise ValueError(
                    f"prediction_type={prediction_type!r} is not supported; allowed: {', '.join(VP_PREDICTION_TYPES)}"
                )
            if alphas_cumprod is None:
                raise ValueError("a VP model chart needs the alphas_cumprod the model was trained with")
            # SADA's parameterisation layer: the same log-sigma table, the same x0 per prediction type
            self.parameterization: Parameterization = VPParameterization(alphas_cumprod, prediction_type)
            log_sigmas = vp_log_sigma(alphas_cumprod)
            self.log_sigmas = log_sigmas.numpy()
            # timestep_tensor's tables: the nodes and, in float64 here, 1 / (node spacing), so the
            # float32 interpolation on the device has an accurate slope (its gradient feeds `a`)
            self._nodes = HostTable(log_sigmas)
            self._inv_spacing = HostTable(1.0 / (log_sigmas[1:] - log_sigmas[:-1]))
        else:
            self.parameterization = FlowParameterization()
        self.flow_matching = flow_matching
        self.prediction_type = "flow" if flow_matching else prediction_type

    @classmethod
    def from_scheduler(cls, scheduler: Any) -> "ModelChart":
        """The chart of the model a pipeline's scheduler (or its config) was built for."""
        config = scheduler_config(scheduler)
        if is_flow_config(config):
            return cls(True)
        keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "rescale_betas_zero_snr")
        ab = alphas_cumprod_from_config(**{k: config[k] for k in keys if config.get(k) is not None})
        return cls(False, config.get("prediction_type", "epsilon"), ab)

    @property
    def sigma_range(self) -> tuple[float, float]:
        """The VE noise levels the model was trained on (VP: first and last DDPM step)."""
        if self.flow_matching:
            return 0.0, math.inf
        return float(np.exp(self.log_sigmas[0])), float(np.exp(self.log_sigmas[-1]))

    def timestep(self, sigma: float) -> float:
        """The timestep a pipeline's scheduler would hand the model at this VE sigma.

        VP: the fractional DDPM index, interpolated in log sigma; flow: ``1000 tau``.
        """
        if self.flow_matching:
            return 1000.0 * sigma / (1.0 + sigma)
        return float(np.interp(math.log(sigma), self.log_sigmas, np.arange(len(self.log_sigmas))))

    def timestep_tensor(self, sigma: torch.Tensor) -> torch.Tensor:
        """:meth:`timestep` as a differentiable function of a tensor sigma, float32 on its device.

        Distillation learns a scale of the mid-point's noise level (AdaSDE's ``a``); its
        gradient flows through the model's timestep input, so the map must stay in autograd.
        It runs at every model call, so it is float32 (MPS has no float64, consumer GPUs run
        it slowly): the interpolation is monotone and its tables come from float64 on the host;
        against the float64 map it agrees to < 2e-6 relative (timestep >= 1) and 1e-4 absolute,
        its slope to ~1e-7 relative (``tests/test_no_float64_on_device.py``).
        """
        s = sigma.to(torch.float32)
        if self.flow_matching:
            return 1000.0 * s / (1.0 + s)
        table = self._nodes.on(s.device)
        inv_spacing = self._inv_spacing.on(s.device)
        log_s = torch.log(s).clamp(table[0], table[-1])
        hi = torch.searchsorted(table, log_s.detach().reshape(-1)).clamp(1, len(table) - 1).reshape(log_s.shape)
        lo = hi - 1
        return lo.to(torch.float32) + (log_s - table[lo]) * inv_spacing[lo]

    def input_scale(self, sigma: Any) -> Any:
        """The model input is ``x_ve * input_scale``: VP state or flow state (float or tensor sigma)."""
        return 1.0 / (1.0 + sigma) if self.flow_matching else (1.0 + sigma * sigma) ** -0.5

    def denoised(self, output: torch.Tensor, x_ve: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """The model's output at ``(x_ve, sigma)`` as ``D(x_ve, sigma)``, in float32."""
        out = output.to(torch.float32)
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=out.device)
        lvl = self.parameterization.level_at_ve_sigma(sigma)
        return self.parameterization.x0_from_output(x_ve * self.input_scale(sigma), out, lvl)
