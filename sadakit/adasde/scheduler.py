"""``AdaSDEScheduler``: learned AdaSDE coefficients inside unmodified diffusers pipelines.

A diffusers pipeline owns the sampling loop and calls the scheduler once per network
evaluation: ``scale_model_input`` (VP pipelines) before the model, ``step`` after it. AdaSDE
needs two evaluations per step, so, as diffusers' Heun and KDPM2 schedulers do, the
timesteps are *interleaved*: ``len(timesteps)`` is the number of model calls (the NFE) and
the scheduler keeps the half-finished step between the two calls.

The numerics are not reimplemented here: the scheduler drives the same step *plan* as
``sadakit.core.adasde.sample_adasde`` (a generator that yields evaluation requests
``(x_ve, sigma)``), converting each request into the model's own chart:

* VP models (SD, SDXL, MusicLDM; eps, v or sample prediction): the pipeline's latents are
  the VE state (``init_noise_sigma = sigma_max``); ``scale_model_input`` divides by
  ``sqrt(1 + sigma^2)`` and the timestep is the (fractional) DDPM index of that sigma in
  the model's ``alphas_cumprod``.
* Flow-matching models (Flux): the pipeline feeds its latents to the model unscaled, so
  ``step`` returns the next request already in the flow chart, ``x_flow = x_ve/(1+sigma)``,
  at timestep ``1000 * sigma/(1+sigma)``. The pipeline's initial latents (unit noise) are
  read as the flow state at the first grid sigma. Because nothing can transform the input
  of the very first call, the analytic first step is not available for flow pipelines.

Churn noise comes from the ``generator`` the pipeline passes to ``step`` (SD, SDXL,
MusicLDM do). Pipelines that pass none (Flux) draw from the scheduler's own generator,
reseeded from ``config.noise_seed`` at every ``set_timesteps``: the same pipeline seed then
gives bit-identical samples, and a different seed still gives a different sample because
the starting noise differs. ``set_noise_generator`` overrides it.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import attrs
import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin, SchedulerOutput

from ..core.adasde import GeneratorLike, Plan, solver_plan, squash
from ..core.parameterization import HostTable
from .chart import ModelChart, alphas_cumprod_from_config, is_flow_config, scheduler_config
from .coefficients import (
    CoefficientFile,
    CoefficientFileError,
    CoefficientMetadata,
    CoefficientMismatchError,
    check_compatible,
    load_coefficients,
)
from .identity import check_model_identity

def _guidance_in_effect(pipe: Any, scale: float) -> float | None:
    """The guidance a pipeline call at ``scale`` really applies (``None``: the denoiser ignores it).

    Guidance-distilled transformers (Flux dev) take the scale as an input whatever its value;
    a Flux transformer without that embedding (schnell) ignores it; classifier-free guidance
    pipelines switch CFG off at ``scale <= 1``, and every such scale is the same function.
    """
    transformer = getattr(pipe, "transformer", None)
    embeds = getattr(getattr(transformer, "config", None), "guidance_embeds", None)
    if embeds is not None:
        return scale if embeds else None
    return scale if scale > 1.0 else None


@contextlib.contextmanager
def _naming_the_file(source: str) -> Iterator[None]:
    """Prefix the file's path to a refusal that does not name it yet (the user may have several files)."""
    try:
        yield
    except CoefficientFileError as exc:
        raise exc.at(source) from None
    except CoefficientMismatchError as exc:
        if source in str(exc):
            raise
        raise type(exc)(f"{source}: {exc}") from None


@dataclass
class _Call:
    """One scheduled model call: its VE noise level and the timestep the model receives."""

    sigma: float
    timestep: float


class AdaSDEScheduler(SchedulerMixin, ConfigMixin):
    """Few-step AdaSDE sampling with distilled coefficients, for any diffusers pipeline loop.

    Build it with ``AdaSDEScheduler.from_file(path, pipe.scheduler)``; the pipeline's own
    scheduler supplies the training noise schedule (VP ``alphas_cumprod`` or flow matching).
    Call the pipeline with ``num_inference_steps`` equal to the file's NFE (or its number
    of steps); any other value is refused, because the coefficients only fit their grid.
    """

    _compatibles: list = []

    @register_to_config
    def __init__(
        self,
        raw_coefficients: list[list[float]] | None = None,
        grid_sigmas: list[float] | None = None,
        coefficient_meta: dict[str, Any] | None = None,
        flow_matching: bool = False,
        prediction_type: str = "epsilon",
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "scaled_linear",
        trained_betas: list[float] | None = None,
        rescale_betas_zero_snr: bool = False,
        noise_seed: int = 0,
        check_call_guidance: bool = True,
        base_image_seq_len: int = 256,
        max_image_seq_len: int = 4096,
        base_shift: float = 0.5,
        max_shift: float = 1.15,
    ) -> None:
        if raw_coefficients is None or grid_sigmas is None or coefficient_meta is None:
            raise ValueError(
                "AdaSDEScheduler needs raw_coefficients, grid_sigmas and coefficient_meta; "
                "build it with AdaSDEScheduler.from_file(path, pipe.scheduler)"
            )
        known = {field.name for field in attrs.fields(CoefficientMetadata)}
        unknown = sorted(set(coefficient_meta) - known)
        if unknown:
            raise CoefficientMismatchError(
                f"AdaSDEScheduler: coefficient_meta has unknown field(s) {unknown} (a scheduler config saved by a newer "
                f"sadakit, or edited by hand); known fields: {sorted(known)}"
            )
        self.meta = CoefficientMetadata(**coefficient_meta)
        self.coefficients = CoefficientFile(
            torch.tensor(raw_coefficients, dtype=torch.float32),
            torch.tensor(grid_sigmas, dtype=torch.float64),
            self.meta,
        )
        check_compatible(self.meta, prediction_type="flow" if flow_matching else prediction_type)
        if flow_matching and self.meta.analytic_first_step:
            raise CoefficientMismatchError(
                "analytic_first_step=True cannot run in a flow-matching pipeline (its first model call "
                "sees the pipeline's latents unchanged); distill with analytic_first_step=False"
            )
        ab = None
        if not flow_matching:
            ab = alphas_cumprod_from_config(
                num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, rescale_betas_zero_snr
            )
        self.chart = ModelChart(flow_matching, prediction_type, ab)
        if not flow_matching:
            # outside its training range a VP model cannot be told the right noise level
            smin_model, smax_model = self.chart.sigma_range
            if self.meta.sigma_max > smax_model * 1.01:
                raise CoefficientMismatchError(
                    f"sigma_max: file has {self.meta.sigma_max:.4g}, pipeline's schedule reaches only {smax_model:.4g}"
                )
            if self.meta.sigma_min < smin_model * 0.99:
                raise CoefficientMismatchError(
                    f"sigma_min: file has {self.meta.sigma_min:.4g}, pipeline's schedule starts at {smin_model:.4g}"
                )
        self.init_noise_sigma = 1.0 if flow_matching else float(self.coefficients.sigmas[0])
        # the float64 grid stays on the host; a sampling run reads it as float32 on its device
        self._grid = HostTable(self.coefficients.sigmas)
        self._sigma_end = float(self.coefficients.sigmas[-1])
        self.num_inference_steps: int | None = None
        self.timesteps = torch.empty(0)
        self.sigmas = torch.empty(0)
        self.nfe = 0
        self._calls: list[_Call] = []
        self._step_index: int | None = None
        self._begin_index: int | None = None
        self._plan: Plan | None = None
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None
        self._coeffs_cache: tuple[torch.device, list] | None = None
        self._own_generator = torch.Generator().manual_seed(noise_seed)
        self._noise_generator: GeneratorLike = None

    # ----------------------------------------------------------------------------------
    # construction
    # ----------------------------------------------------------------------------------

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike,
        base_scheduler_config: Any = None,
        *,
        pipe: Any = None,
        allow_other_model: bool = False,
        model: str | None = None,
        guidance_scale: float | None = None,
        noise_seed: int = 0,
        check_call_guidance: bool = True,
    ) -> "AdaSDEScheduler":
        """Load a coefficient file for the pipeline whose scheduler (or config) is given.

        ``base_scheduler_config`` is ``pipe.scheduler`` or its config; it tells the training
        schedule and the prediction type (default with ``pipe``: ``pipe.scheduler``). With
        ``pipe`` given, the file's model fingerprint is checked against the pipeline's denoiser
        and a file distilled for another model raises ``OtherModelError`` unless
        ``allow_other_model=True`` (files without a fingerprint load with a logged warning).
        ``model`` / ``guidance_scale``, when given, are checked against the file (a mismatch
        raises ``CoefficientMismatchError`` naming the field, before anything in the pipeline
        changes). A malformed file raises ``CoefficientFileError`` naming the file and the
        field. Each pipeline call is checked too: a ``guidance_scale`` other than the file's
        is refused unless ``check_call_guidance=False``.
        """
        source = os.fspath(path)
        cf = load_coefficients(source)
        with _naming_the_file(source):
            check_compatible(cf.meta, model=model, guidance_scale=guidance_scale)
            if pipe is not None:
                check_model_identity(cf.meta, pipe, source=source, allow_other_model=allow_other_model)
                if base_scheduler_config is None:
                    base_scheduler_config = pipe.scheduler
            return cls.from_coefficients(cf, base_scheduler_config, noise_seed=noise_seed,
                                         check_call_guidance=check_call_guidance)

    @classmethod
    def from_coefficients(
        cls, cf: CoefficientFile, base_scheduler_config: Any = None, *, noise_seed: int = 0,
        check_call_guidance: bool = True,
    ) -> "AdaSDEScheduler":
        """Same as ``from_file`` for an in-memory ``CoefficientFile`` (e.g. fresh from distillation)."""
        base = scheduler_config(base_scheduler_config)
        flow = is_flow_config(base) if base else cf.meta.prediction_type == "flow"
        kwargs: dict[str, Any] = {}
        for key in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "rescale_betas_zero_snr"):
            if key in base and base[key] is not None:
                kwargs[key] = base[key]
        for key in ("base_image_seq_len", "max_image_seq_len", "base_shift", "max_shift"):
            if key in base and base[key] is not None:
                kwargs[key] = base[key]
        return cls(
            raw_coefficients=cf.raw.tolist(),
            grid_sigmas=cf.sigmas.tolist(),
            coefficient_meta=attrs.asdict(cf.meta),
            flow_matching=flow,
            prediction_type="flow" if flow else base.get("prediction_type", cf.meta.prediction_type),
            noise_seed=noise_seed,
            check_call_guidance=check_call_guidance,
            **kwargs,
        )

    # ----------------------------------------------------------------------------------
    # the diffusers scheduler interface
    # ----------------------------------------------------------------------------------

    @property
    def order(self) -> int:
        """Model calls per step, for the pipelines' progress-bar bookkeeping (as Heun: 2)."""
        return 1 if self.meta.solver in ("euler", "multistep") else 2

    @property
    def step_index(self) -> int | None:
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        self._begin_index = begin_index

    def set_noise_generator(self, generator: GeneratorLike) -> None:
        """Churn noise source for pipelines that do not pass a generator to ``step``."""
        self._noise_generator = generator

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        sigmas: list[float] | np.ndarray | None = None,
        mu: float | None = None,
        timesteps: list[float] | None = None,
    ) -> None:
        """Prepare the interleaved call schedule of the file's grid.

        ``num_inference_steps`` (or ``len(sigmas)`` when a pipeline passes its own sigmas,
        as Flux does) must be the file's NFE or its number of steps; the sigma *values* and
        ``mu`` a pipeline passes are not used: the coefficients were fitted on the file's grid.
        """
        meta = self.meta
        requested = num_inference_steps
        if requested is None and sigmas is not None:
            requested = len(sigmas)
        if requested is None and timesteps is not None:
            requested = len(timesteps)
        if requested is not None and requested not in (meta.nfe, meta.steps):
            raise CoefficientMismatchError(
                f"nfe: file has {meta.nfe} ({meta.steps} steps), pipeline asked for num_inference_steps={requested}; "
                f"call the pipeline with num_inference_steps={meta.nfe} or load coefficients distilled for "
                f"{requested} evaluations"
            )
        device = torch.device(device) if device is not None else torch.device("cpu")
        coeffs = squash(self.coefficients.raw.to(device), meta.gamma_max)
        # The call schedule does not depend on the state: a dry run of the plan on a scalar
        # gives it exactly, with the very code that will run the real sample.
        requests: list[float] = []
        dry = solver_plan(
            torch.zeros(1, device=device), self._grid.on(device), coeffs, meta.solver,
            torch.Generator(device=device).manual_seed(0), meta.analytic_first_step,
        )
        try:
            _, s = next(dry)
            while True:
                requests.append(float(s))
                _, s = dry.send(torch.zeros(1, device=device))
        except StopIteration:
            pass
        self._calls = [_Call(s, self.chart.timestep(s)) for s in requests]
        self.timesteps = torch.tensor([c.timestep for c in self._calls], dtype=torch.float32, device=device)
        self.sigmas = torch.tensor(requests + [self._sigma_end], dtype=torch.float32, device=device)
        self.num_inference_steps = len(self._calls)
        self._coeffs_cache = (device, coeffs)
        self._step_index = None
        self._plan = None
        self._pending = None
        self.nfe = 0
        self._own_generator.manual_seed(self.config.noise_seed)
        if self.config.check_call_guidance:
            self._check_call_guidance()

    def _check_call_guidance(self) -> None:
        """Refuse a pipeline call whose guidance differs from the one the file was distilled at.

        The coefficients were fitted to the CFG-combined denoiser at one guidance scale; at
        another they still sample, only worse, and nothing would say so. The scale is an
        argument of the pipeline's ``__call__``, which is on the stack here (diffusers
        pipelines call ``set_timesteps`` from it, directly or via ``retrieve_timesteps``).
        Outside a pipeline call, or for a pipeline without that argument, nothing is checked.
        """
        from diffusers import DiffusionPipeline

        if self.meta.guidance_scale is None:
            return
        frame = sys._getframe(1)
        for _ in range(6):
            frame = frame.f_back
            if frame is None:
                return
            owner = frame.f_locals.get("self")
            if isinstance(owner, DiffusionPipeline) and getattr(owner, "scheduler", None) is self:
                called, name = frame.f_locals.get("guidance_scale"), "guidance_scale"
                if frame.f_locals.get("do_true_cfg") is True:
                    # Flux-style true CFG (one call per branch): the file's scale is the branches' combination
                    called, name = frame.f_locals.get("true_cfg_scale"), "true_cfg_scale"
                if not isinstance(called, (int, float)):
                    return
                if name == "true_cfg_scale":
                    used, expected = float(called), self.meta.guidance_scale
                else:
                    used = _guidance_in_effect(owner, float(called))
                    expected = _guidance_in_effect(owner, self.meta.guidance_scale)
                if used != expected and not (used is not None and expected is not None
                                             and math.isclose(used, expected, rel_tol=1e-4)):
                    raise CoefficientMismatchError(
                        f"{name}: the coefficient file was distilled at guidance_scale={self.meta.guidance_scale:g}, "
                        f"{type(owner).__name__} was called with {name}={called:g}; call it with "
                        f"{name}={self.meta.guidance_scale:g}, distil coefficients at {called:g}, or build "
                        f"the scheduler with check_call_guidance=False to sample anyway"
                    )
                return

    def _index(self) -> int:
        if self._step_index is None:
            self._step_index = self._begin_index or 0
        return self._step_index

    def _first_request(self, sample: torch.Tensor, generator: GeneratorLike) -> tuple[Plan, torch.Tensor, torch.Tensor]:
        """Start the plan from the pipeline's initial latents; returns (plan, x_ve, sigma)."""
        if self._coeffs_cache is None:
            raise RuntimeError("call set_timesteps before scale_model_input / step")
        coeffs = self._coeffs_cache[1]
        x = sample.to(torch.float32)
        if self.config.flow_matching:
            x = x * (1.0 + self._calls[0].sigma)  # the model reads the latents as x_flow at the first sigma
        plan = solver_plan(
            x, self._grid.on(x.device), coeffs, self.meta.solver, generator, self.meta.analytic_first_step
        )
        xr, sr = next(plan)
        return plan, xr, sr

    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor | None = None) -> torch.Tensor:
        """VP: the VE state divided by ``sqrt(1 + sigma^2)``; at an analytic first step, the mid-point.

        Pure (no state change): pipelines call it on the CFG-doubled batch.
        """
        idx = self._index()
        if self.config.flow_matching:
            return sample
        if idx == 0 and self.meta.analytic_first_step:
            # gamma_0 = 0: no noise is drawn, the first request is a deterministic map of the input
            _, x, _ = self._first_request(sample, None)
        else:
            x = sample.to(torch.float32)
        return (x * self.chart.input_scale(self._calls[idx].sigma)).to(sample.dtype)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: GeneratorLike = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[torch.Tensor]:
        """Feed one model evaluation into the running AdaSDE step.

        Returns the pipeline state for the next call (VP: VE state; flow: flow-chart model
        input), or after the last call the final sample in the model's chart (VP state
        ``x_ve / sqrt(1 + sigma_min^2)``, flow state ``x_ve / (1 + sigma_min)``).
        """
        idx = self._index()
        if idx >= len(self._calls):
            raise RuntimeError(
                f"step called {idx + 1} times but the schedule has {len(self._calls)} calls; call set_timesteps again"
            )
        if idx == 0 or self._plan is None:
            gen = generator if generator is not None else (self._noise_generator or self._own_generator)
            self._plan, x_req, s_req = self._first_request(sample, gen)
        else:
            assert self._pending is not None
            x_req, s_req = self._pending
        denoised = self.chart.denoised(model_output, x_req, s_req)
        self.nfe += 1
        self._step_index = idx + 1
        try:
            x_next, s_next = self._plan.send(denoised)
            self._pending = (x_next, s_next)
            out = x_next / (1.0 + s_next) if self.config.flow_matching else x_next
        except StopIteration as stop:
            final = stop.value
            self._plan, self._pending = None, None
            sigma_end = self._sigma_end
            # the last state sits at the grid's last node (sigma_min > 0, or 0 for learned ends):
            # hand it back in the model's own chart, as VP-state schedulers (DDIM, DPM-Solver,
            # UniPC) do and as the latents decoder expects
            scale = (1.0 + sigma_end) if self.config.flow_matching else math.sqrt(1.0 + sigma_end**2)
            out = final / scale
        prev = out.to(sample.dtype)
        if not return_dict:
            return (prev,)
        return SchedulerOutput(prev_sample=prev)

    def add_noise(
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """Noise clean latents to the calls at ``timesteps`` (VP: VE state ``x0 + sigma z``)."""
        sig = self._sigmas_at(timesteps, original_samples)
        if self.config.flow_matching:
            tau = sig / (1.0 + sig)
            return ((1.0 - tau) * original_samples + tau * noise).to(original_samples.dtype)
        return (original_samples + sig * noise).to(original_samples.dtype)

    def scale_noise(self, sample: torch.Tensor, timestep: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Flow-matching name of ``add_noise`` (FlowMatchEulerDiscreteScheduler interface)."""
        return self.add_noise(sample, noise, timestep)

    def _sigmas_at(self, timesteps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        ts = torch.as_tensor(timesteps, dtype=torch.float32).reshape(-1).cpu()
        if not self._calls:
            raise RuntimeError("call set_timesteps before add_noise")
        table = torch.tensor([c.timestep for c in self._calls])
        idx = (ts[:, None] - table[None, :]).abs().argmin(dim=1)
        sig = torch.tensor([self._calls[i].sigma for i in idx.tolist()], dtype=torch.float32, device=like.device)
        if sig.numel() == 1:
            sig = sig.expand(like.shape[0])
        return sig.reshape(-1, *([1] * (like.ndim - 1)))


def scheduler_for_pipeline(
    pipe: Any,
    path: str | os.PathLike,
    allow_other_model: bool = False,
    *,
    guidance_scale: float | None = None,
    noise_seed: int = 0,
    check_call_guidance: bool = True,
) -> AdaSDEScheduler:
    """An ``AdaSDEScheduler`` from the file at ``path`` for ``pipe``, every check on.

    The one call for a command line or a user's one-liner
    (``pipe.scheduler = scheduler_for_pipeline(pipe, path)``): the file is validated, its
    model fingerprint must match the pipeline's denoiser unless ``allow_other_model``, and its
    prediction type and sigma range must fit the pipeline's schedule. Nothing in ``pipe``
    changes; a refusal raises a ``CoefficientMismatchError`` subclass naming the file.
    """
    return AdaSDEScheduler.from_file(
        path, pipe.scheduler, pipe=pipe, allow_other_model=allow_other_model, guidance_scale=guidance_scale,
        noise_seed=noise_seed, check_call_guidance=check_call_guidance,
    )
