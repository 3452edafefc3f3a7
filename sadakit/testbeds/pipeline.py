"""Model-shaped wrappers around the exact denoiser, and a minimal diffusers-style pipeline.

The wrappers speak the languages real denoisers speak, so diffusers' own schedulers (and
SADA's hooks on the denoiser module) run on the analytic testbed unchanged:

* ``GMMEpsModel``: eps-prediction on SD's VP schedule (scaled_linear 0.00085..0.012, 1000
  steps), ``forward(sample, timestep)`` with the DDPM index as timestep; fractional timesteps
  (Euler / Karras sigmas) are interpolated linearly in log-sigma, the exact inverse of
  diffusers' ``_sigma_to_t``.
* ``GMMFlowModel``: flow matching, ``forward(hidden_states, timestep)`` with t in [0, 1]
  (Flux's convention: the pipeline passes ``scheduler_timestep / 1000``), velocity
  ``u = noise - x0``.
* ``GMMTrigVModel``: v-prediction on the trigonometric schedule ``alpha = cos(pi t / 2)``,
  which is what diffusers' ``IPNDMScheduler`` assumes of its model.

Each wrapper computes in float64 (``compute_dtype``) whatever the input dtype, returns the
input dtype, and counts its real evaluations in ``nfe`` (counted inside ``forward``: a call
that a hook answers without running ``forward`` is not counted).
"""

from __future__ import annotations

import abc
import inspect
import math
from dataclasses import dataclass

import torch
from diffusers.utils import BaseOutput
from torch import nn

from .configs import Testbed, get_testbed

#: SD's training schedule, used by every VP scheduler the testbed builds.
SD_SCHEDULE = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}


def sd_alphas_cumprod() -> torch.Tensor:
    """alphas_cumprod of SD's scaled_linear schedule, float64 (same formula as diffusers)."""
    n = SD_SCHEDULE["num_train_timesteps"]
    betas = torch.linspace(SD_SCHEDULE["beta_start"] ** 0.5, SD_SCHEDULE["beta_end"] ** 0.5, n, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


@dataclass
class GMMModelOutput(BaseOutput):
    """Like diffusers' ``UNet2DConditionOutput``: the model's prediction in ``.sample``."""

    sample: torch.Tensor


def _timesteps(timestep: torch.Tensor | float, batch: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if torch.is_tensor(timestep):
        t = timestep.to(device=device, dtype=dtype).reshape(-1)
    else:  # a Python float keeps its float64 value (as_tensor would round it to float32 first)
        t = torch.tensor(timestep, dtype=dtype, device=device).reshape(-1)
    return t.expand(batch) if t.numel() == 1 else t


class _AnalyticModel(nn.Module, abc.ABC):
    """Shared machinery: (model input, timestep) -> flow chart -> exact x0 -> model output.

    Subclasses implement ``flow_coefficients(t) -> (alpha, s)`` with the model-space state
    ``x_model = alpha x0 + s n`` (so ``x_flow = x_model / (alpha + s)``, ``tau = s / (alpha + s)``)
    and ``output_from_x0``.
    """

    #: Name of the latent argument of ``forward`` (diffusers: UNet ``sample``, Flux ``hidden_states``).
    sample_arg = "sample"
    #: What the pipeline multiplies the scheduler's timestep by before calling the model.
    pipeline_timestep_scale = 1.0
    #: Parameterisation name, read by the testbed's plugin.
    prediction_type = "epsilon"

    def __init__(self, testbed: Testbed | str, compute_dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        self.testbed = get_testbed(testbed) if isinstance(testbed, str) else testbed
        self.compute_dtype = compute_dtype
        self.register_buffer("_anchor", torch.zeros(0), persistent=False)  # gives .device / .dtype
        self.nfe = 0

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    @property
    def dtype(self) -> torch.dtype:
        return self._anchor.dtype

    @abc.abstractmethod
    def flow_coefficients(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha, s) relating the model-space state to the flow chart at model time ``t``."""

    @abc.abstractmethod
    def output_from_x0(self, x: torch.Tensor, x0: torch.Tensor, alpha: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """The model's output (eps / velocity / v) that implies ``x0``."""

    def flow_state(self, x_model: torch.Tensor, timestep: torch.Tensor | float):
        """(x_flow, tau, 1 - tau) in ``compute_dtype`` for a model input; tau is (B,)."""
        x = x_model.to(self.compute_dtype)
        t = _timesteps(timestep, x.shape[0], self.compute_dtype, x.device)
        alpha, s = self.flow_coefficients(t)
        norm = alpha + s
        shape = (-1,) + (1,) * (x.dim() - 1)
        return x / norm.reshape(shape), s / norm, alpha / norm

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | float, return_dict: bool = True, **_: object):
        self.nfe += 1
        x = sample.to(self.compute_dtype)
        t = _timesteps(timestep, x.shape[0], self.compute_dtype, x.device)
        alpha, s = self.flow_coefficients(t)
        norm = alpha + s
        shape = (-1,) + (1,) * (x.dim() - 1)
        x0 = self.testbed.denoiser.denoise_flow(x / norm.reshape(shape), s / norm, alpha / norm)
        out = self.output_from_x0(x, x0, alpha.reshape(shape), s.reshape(shape)).to(sample.dtype)
        return GMMModelOutput(sample=out) if return_dict else (out,)

    def _reset_stateful_cache(self, recurse: bool = True) -> None:
        """What diffusers' ``ModelMixin._reset_stateful_cache`` does: reset stateful hooks."""
        from diffusers.hooks import HookRegistry

        registry = getattr(self, "_diffusers_hook", None)
        if isinstance(registry, HookRegistry):
            registry.reset_stateful_hooks(recurse=recurse)


class GMMEpsModel(_AnalyticModel):
    """eps-prediction on a VP schedule indexed by the DDPM timestep (fractional allowed)."""

    def __init__(self, testbed: Testbed | str, alphas_cumprod: torch.Tensor | None = None, **kwargs) -> None:
        super().__init__(testbed, **kwargs)
        ab = (sd_alphas_cumprod() if alphas_cumprod is None else torch.as_tensor(alphas_cumprod)).to(torch.float64)
        self.register_buffer("alphas_cumprod", ab, persistent=False)
        self.register_buffer("_log_sigma", 0.5 * torch.log((1.0 - ab) / ab), persistent=False)

    def flow_coefficients(self, t):
        table = self._log_sigma.to(t)
        t = t.clamp(0, table.numel() - 1)
        lo = t.floor().long().clamp(max=table.numel() - 2)
        w = t - lo.to(t.dtype)
        log_sigma = table[lo] * (1 - w) + table[lo + 1] * w
        # alpha = 1/sqrt(1+sigma^2), s = sigma/sqrt(1+sigma^2), finite at both ends
        return torch.sigmoid(-2.0 * log_sigma).sqrt(), torch.sigmoid(2.0 * log_sigma).sqrt()

    def output_from_x0(self, x, x0, alpha, s):
        return (x - alpha * x0) / s.clamp_min(1e-12)


class GMMFlowModel(_AnalyticModel):
    """Flow matching velocity ``u = noise - x0`` for ``x_t = (1 - t) x0 + t noise``, t in [0, 1]."""

    sample_arg = "hidden_states"
    pipeline_timestep_scale = 1e-3
    prediction_type = "flow"

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor | float, return_dict: bool = True, **kw):
        return super().forward(hidden_states, timestep, return_dict=return_dict, **kw)

    def flow_coefficients(self, t):
        t = t.clamp(0.0, 1.0)
        return 1.0 - t, t

    def output_from_x0(self, x, x0, alpha, s):
        return (x - x0) / s.clamp_min(1e-12)


class GMMTrigVModel(_AnalyticModel):
    """v-prediction with ``alpha = cos(pi t / 2)``, ``s = sin(pi t / 2)``, t in [0, 1] (iPNDM)."""

    prediction_type = "v_prediction"

    def flow_coefficients(self, t):
        angle = t.clamp(0.0, 1.0) * (math.pi / 2)
        return angle.cos().clamp_min(0.0), angle.sin()

    def output_from_x0(self, x, x0, alpha, s):
        eps = (x - alpha * x0) / s.clamp_min(1e-12)
        return alpha * eps - s * x0


MODEL_CLASSES: dict[str, type[_AnalyticModel]] = {"eps-vp": GMMEpsModel, "flow": GMMFlowModel, "v-trig": GMMTrigVModel}


@dataclass
class GMMPipelineOutput(BaseOutput):
    """Final samples in data space and what it took to make them.

    ``samples`` is x at ``final_sigma`` in the VE chart (x0 itself when final_sigma = 0).
    ``nfe``: real denoiser evaluations; ``calls``: denoiser calls the loop made (they differ when
    a hook answers some calls without evaluating). ``start_tau``/``start_scale``: the first call
    saw ``x_flow = start_scale * noise`` at flow time ``start_tau`` (feed to the reference solver).
    """

    samples: torch.Tensor
    nfe: int
    calls: int
    noise: torch.Tensor
    start_tau: float
    start_scale: float
    final_sigma: float


class GMMPipeline:
    """The standard diffusers denoising loop over an analytic denoiser.

    ``denoiser`` is one of the wrappers above, ``scheduler`` any diffusers scheduler whose model
    language matches it (VP schedulers with ``GMMEpsModel``, flow-matching schedulers with
    ``GMMFlowModel``, ``IPNDMScheduler`` with ``GMMTrigVModel``).
    """

    def __init__(self, denoiser: _AnalyticModel, scheduler, testbed: Testbed | None = None) -> None:
        self.denoiser = denoiser
        self.scheduler = scheduler
        self.testbed = testbed if testbed is not None else denoiser.testbed
        from .plugin import register  # the testbed's sadakit plugin (idempotent; no-op via entry point)

        register()

    @property
    def components(self) -> dict[str, object]:
        return {"denoiser": self.denoiser, "scheduler": self.scheduler}

    @property
    def device(self) -> torch.device:
        return self.denoiser.device

    def maybe_free_model_hooks(self) -> None:
        """As in ``DiffusionPipeline``: reset stateful hooks when a generation ends."""
        reset = getattr(self.denoiser, "_reset_stateful_cache", None)
        if reset is not None:
            reset()

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        num_inference_steps: int = 20,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> GMMPipelineOutput:
        """Sample ``batch_size`` points with ``num_inference_steps`` scheduler steps.

        ``latents``: unit Gaussian start noise of shape (B, *data_shape); it is scaled by the
        scheduler's ``init_noise_sigma`` as diffusers pipelines do, so two runs with the same
        ``latents`` start from the same noise.
        """
        shape = self.testbed.data_shape
        if latents is None:
            latents = torch.randn((batch_size, *shape), generator=generator, dtype=torch.float64)
        noise = latents.detach().clone()
        device = self.device
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        x = latents.to(device=device, dtype=dtype) * getattr(self.scheduler, "init_noise_sigma", 1.0)
        step_kwargs = {}
        if "generator" in inspect.signature(self.scheduler.step).parameters:
            step_kwargs["generator"] = generator
        nfe_before = self.denoiser.nfe
        scale = self.denoiser.pipeline_timestep_scale
        start_tau = start_scale = float("nan")
        scale_input = hasattr(self.scheduler, "scale_model_input")  # flow-matching schedulers have none
        try:
            for i, t in enumerate(timesteps):
                model_in = self.scheduler.scale_model_input(x, t) if scale_input else x
                t_model = (t * scale).expand(x.shape[0]) if torch.is_tensor(t) else t * scale
                if i == 0:
                    x_flow, tau, _ = self.denoiser.flow_state(model_in, t_model)
                    start_tau = float(tau[0])
                    start_scale = float((x_flow.reshape(-1) @ noise.reshape(-1).to(x_flow)) / noise.pow(2).sum())
                kwargs = {self.denoiser.sample_arg: model_in, "timestep": t_model, "return_dict": False}
                out = self.denoiser(**kwargs)[0]
                x = self.scheduler.step(out, t, x, **step_kwargs, return_dict=False)[0]
        finally:
            self.maybe_free_model_hooks()
        final_sigma = _final_sigma(self.scheduler)
        samples = x.to(torch.float64) * math.sqrt(1.0 + final_sigma**2)  # VP state -> VE (no-op at sigma 0)
        return GMMPipelineOutput(
            samples=samples,
            nfe=self.denoiser.nfe - nfe_before,
            calls=len(timesteps),
            noise=noise,
            start_tau=start_tau,
            start_scale=start_scale,
            final_sigma=final_sigma,
        )


def _final_sigma(scheduler) -> float:
    """The VE noise level the scheduler's last step lands on (0 for most configured solvers).

    Schedulers with a ``sigmas`` table end at its last entry; for VP-state schedulers that is a
    VE sigma (DEIS ends at sigma(t=0) ~ 0.029). DDIM (``set_alpha_to_one``), iPNDM and flow
    schedulers end at 0.
    """
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is None or getattr(scheduler.config, "use_flow_sigmas", False) or "FlowMatch" in type(scheduler).__name__:
        return 0.0
    return float(sigmas[-1])
