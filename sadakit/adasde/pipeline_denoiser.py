"""A plugin pipeline's denoiser, with its prompts and CFG, as the VE ``D(x, sigma)`` AdaSDE distils on.

Distillation needs the function the pipeline will compute under ``AdaSDEScheduler``, not an
approximation of it: the same text conditioning, the same classifier-free guidance, the same
timestep and input scaling. Rather than re-implementing every pipeline's prompt encoding, the
adapter runs the pipeline once, stops it at its first scheduler step and keeps its denoiser call's
arguments (prompt embeddings, pooled embeddings, SDXL time ids, Flux guidance and ids,
MusicLDM's CLAP class embedding, ...). Replaying the call with another latent and timestep
gives the denoiser under exactly the pipeline's conditioning; the plugin says which module
is the denoiser and how its call names the latent and the timestep.

Conventions read from the captured call (diffusers' own): under CFG the denoiser batch is
``[unconditional; conditional]`` and the guided output is ``u + g (c - u)``; tensors whose
first dimension is that batch are per-row conditioning (except the plugin's
``unbatched_args``) and are tiled to any sample batch (sample ``j`` uses prompt ``j mod P``).
Pipelines that call the denoiser once per CFG branch (Flux's ``true_cfg_scale`` with a negative
prompt, Wan) make a second call at the same latent and timestep: that call is captured too
(conditional first, unconditional second, as those pipelines order them) and both are replayed,
combined the same way. Conversions between the VE state and the model's chart come from
:class:`sadakit.adasde.chart.ModelChart`, shared with the scheduler.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.utils.checkpoint

from ..errors import UnsupportedPipelineError
from ..registry import find_plugin
from .chart import ModelChart
from .distill import DistillConfig, DistillResult, distill

#: Default VE range for flow-matching models (tau from ~0.002 to 0.99): sigma = tau / (1 - tau)
#: is infinite at tau = 1, so the grid starts just below it.
FLOW_SIGMA_RANGE = (0.002, 99.0)
#: Top of the default VP grid: EDM's sigma_max. Zero-terminal-SNR schedules reach 4096, where
#: a whole step of a few-step solver would only move pure noise. The best top is model-dependent
#: (measured, NFE 5, 48 / 32 prompts): on the bundled zero-SNR shapes model 14.6 beats 80
#: (learned churn + Euler 25.9 vs 24.2 dB, AdaSDE 23.6 vs 20.6 dB), on the zero-SNR notes model
#: 80 beats 14.6 (31.8 vs 26.5 dB, 28.7 vs 24.2 dB); pass ``sigma_max`` to choose.
VP_SIGMA_CAP = 80.0


class _StopCapture(Exception):
    """Raised by the capture hook to end the pipeline call once the denoiser's inputs are known."""


def _model_name(pipe: Any) -> str:
    name = getattr(getattr(pipe, "config", None), "_name_or_path", None) or ""
    return str(name) or type(pipe).__name__


class PipelineDenoiser:
    """``D(x_ve, sigma)`` of one pipeline under fixed prompts and guidance (build with :func:`pipeline_denoiser`).

    Attributes used by distillation: ``sample_noise(batch, generator)`` draws unit noise in the
    pipeline's latent layout, ``sigma_range`` is the VE range the model was trained on and
    ``meta`` the identity that goes into the coefficient file.
    """

    def __init__(
        self,
        pipe: Any,
        module: torch.nn.Module,
        bound: inspect.BoundArguments,
        *,
        sample_arg: str,
        timestep_arg: str,
        output_field: str,
        chart: ModelChart,
        prompts: int,
        guidance_scale: float | None,
        timestep_scale: float,
        model: str,
        unbatched_args: frozenset[str] = frozenset(),
        uncond_bound: inspect.BoundArguments | None = None,
    ) -> None:
        self.pipe = pipe
        self.module = module
        self.chart = chart
        self.sample_arg = sample_arg
        self.timestep_arg = timestep_arg
        self.output_field = output_field
        self.prompts = prompts
        self.model = model
        self.timestep_scale = timestep_scale
        self.unbatched_args = unbatched_args
        #: recompute each call's activations in the backward pass instead of keeping them:
        #: a student rollout otherwise holds the activations of every call at once
        self.checkpoint_calls = False
        sample = bound.arguments[sample_arg]
        self.model_batch = int(sample.shape[0])
        self.cfg = self.model_batch == 2 * prompts
        if not self.cfg and self.model_batch != prompts:
            raise UnsupportedPipelineError(
                f"{type(pipe).__name__}: the denoiser was called with a batch of {self.model_batch} for {prompts} "
                "prompt(s); only 1 row per prompt, or 2 under classifier-free guidance, can be replayed "
                "(pass num_images_per_prompt=1)"
            )
        #: the CFG scale, or a guidance-distilled model's embedded guidance (Flux): either way
        #: it shapes the function that was distilled, so it goes into the coefficient file
        self.guidance_scale = guidance_scale
        self.latent_shape = tuple(sample.shape[1:])
        self.dtype = sample.dtype
        self.device = sample.device
        t = bound.arguments[timestep_arg]
        self.timestep_dtype = t.dtype if torch.is_tensor(t) and t.is_floating_point() else torch.float32
        # a 1-d timestep (Flux: one per row, also for a single prompt) is expanded to every distillation batch
        self.timestep_batched = torch.is_tensor(t) and t.ndim >= 1
        self._bound = bound
        #: the unconditional call of a pipeline that calls the denoiser once per CFG branch
        self._uncond_bound = uncond_bound
        self.separate_cfg = uncond_bound is not None

    # ------------------------------------------------------------------ distillation inputs

    @property
    def sigma_range(self) -> tuple[float, float]:
        """Default VE range to distil on: the model's training range (top capped at ``VP_SIGMA_CAP``), or flow's."""
        if self.chart.flow_matching:
            return FLOW_SIGMA_RANGE
        lo, hi = self.chart.sigma_range
        return lo, min(hi, VP_SIGMA_CAP)

    @property
    def prediction_type(self) -> str:
        return self.chart.prediction_type

    @property
    def meta(self) -> dict[str, Any]:
        """What ``distill`` records about the model (the CLI's factory contract)."""
        smin, smax = self.sigma_range
        return {
            "model": self.model,
            "prediction_type": self.prediction_type,
            "guidance_scale": self.guidance_scale,
            "sigma_min": smin,
            "sigma_max": smax,
            # uncapped: where a reference run starts (the teacher of learned ends, ``distill(learn_ends=True)``)
            "model_sigma_range": None if self.chart.flow_matching else tuple(float(v) for v in self.chart.sigma_range),
        }

    def sample_noise(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        """Unit Gaussian noise of ``batch`` samples in the pipeline's latent layout (float32)."""
        z = torch.randn((batch, *self.latent_shape), generator=generator, device=generator.device, dtype=torch.float32)
        return z.to(self.device)

    # ------------------------------------------------------------------ the denoiser

    def _rows(self, batch: int) -> torch.Tensor:
        prompt_of = torch.arange(batch, device=self.device) % self.prompts
        return torch.cat([prompt_of, prompt_of + self.prompts]) if self.cfg else prompt_of

    def _tile(self, name: str, value: Any, rows: torch.Tensor) -> Any:
        if isinstance(value, dict):
            return {k: self._tile(k, v, rows) for k, v in value.items()}
        if (
            torch.is_tensor(value)
            and name not in self.unbatched_args
            and value.ndim >= 1
            and value.shape[0] == self.model_batch
        ):
            return value.index_select(0, rows.to(value.device))
        return value

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """The guided ``D(x, sigma)`` in float32; differentiable in ``x`` and ``sigma``."""
        sigma_t = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
        batch = x.shape[0]
        model_x = (x.to(torch.float32) * self.chart.input_scale(sigma_t)).to(self.dtype)
        if self.cfg:
            model_x = torch.cat([model_x, model_x])
        timestep = (self.chart.timestep_tensor(sigma_t) * self.timestep_scale).to(self.timestep_dtype)
        if self.timestep_batched:
            timestep = timestep.expand(model_x.shape[0])
        rows = self._rows(batch)
        out = self._replay(self._bound, model_x, timestep, rows)
        if self.cfg:
            uncond, cond = out.chunk(2)
            out = uncond + self.guidance_scale * (cond - uncond)
        elif self._uncond_bound is not None:
            uncond = self._replay(self._uncond_bound, model_x, timestep, rows)
            out = uncond + self.guidance_scale * (out - uncond)
        return self.chart.denoised(out, x.to(torch.float32), sigma_t)

    def _replay(self, bound: inspect.BoundArguments, model_x: torch.Tensor, timestep: torch.Tensor,
                rows: torch.Tensor) -> torch.Tensor:
        """One captured denoiser call replayed at ``model_x`` / ``timestep`` (its conditioning tiled to ``rows``)."""
        call = inspect.BoundArguments(bound.signature, bound.arguments.copy())
        for name, value in list(call.arguments.items()):
            call.arguments[name] = self._tile(name, value, rows)

        def forward(sample: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            call.arguments[self.sample_arg] = sample
            call.arguments[self.timestep_arg] = t
            out = self.module(*call.args, **call.kwargs)
            return (out[0] if isinstance(out, (tuple, list)) else getattr(out, self.output_field)).to(torch.float32)

        if self.checkpoint_calls and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(forward, model_x, timestep, use_reentrant=False)
        return forward(model_x, timestep)

    @contextlib.contextmanager
    def frozen(self) -> Iterator["PipelineDenoiser"]:
        """Model weights out of autograd while distilling (only the coefficients learn), restored after."""
        params = [p for p in self.module.parameters() if p.requires_grad]
        for p in params:
            p.requires_grad_(False)
        try:
            yield self
        finally:
            for p in params:
                p.requires_grad_(True)


@dataclass
class _Captured:
    """What the capture saw before the pipeline's first scheduler step."""

    calls: list[inspect.BoundArguments]  # the denoiser calls' arguments (cloned)
    outputs: list[torch.Tensor]  # their outputs
    combined: torch.Tensor | None  # what the pipeline handed to ``scheduler.step``: its guided prediction


def _capture(pipe: Any, module: torch.nn.Module, call_kwargs: dict[str, Any]) -> _Captured:
    """Run the pipeline up to its first scheduler step and return the denoiser calls made before it.

    One call per step (CFG batched, or none) gives one call; a pipeline that calls the denoiser
    once per CFG branch gives two. The prediction handed to ``step`` shows how they were combined.
    """
    seen = _Captured([], [], None)
    signature = inspect.signature(module.forward)

    def pre_hook(mod: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        bound = signature.bind(*args, **kwargs)
        bound.arguments = {
            k: (v.detach().clone() if torch.is_tensor(v) else v) for k, v in bound.arguments.items()
        }
        seen.calls.append(bound)
        if len(seen.calls) > 2:
            raise _StopCapture

    def post_hook(mod: torch.nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
        first = out[0] if isinstance(out, (tuple, list)) else getattr(out, "sample", out)
        if torch.is_tensor(first):
            seen.outputs.append(first.detach().clone())

    def step(*args: Any, **kwargs: Any) -> Any:
        output = args[0] if args else kwargs.get("model_output")
        seen.combined = output.detach().clone() if torch.is_tensor(output) else None
        raise _StopCapture

    handles = [module.register_forward_pre_hook(pre_hook, with_kwargs=True),
               module.register_forward_hook(post_hook, with_kwargs=True)]
    scheduler = pipe.scheduler
    scheduler.step = step  # an instance attribute over the class's method, removed below
    try:
        with torch.no_grad():
            pipe(**call_kwargs)
    except _StopCapture:
        pass
    finally:
        for handle in handles:
            handle.remove()
        if "step" in vars(scheduler):
            del scheduler.step
    if not seen.calls:
        raise UnsupportedPipelineError(f"{type(pipe).__name__}: the pipeline finished without calling its denoiser")
    return seen


def _same_input(a: inspect.BoundArguments, b: inspect.BoundArguments, sample_arg: str, timestep_arg: str) -> bool:
    """Whether two captured calls evaluate the same latent at the same timestep (two CFG branches)."""
    def same(x: Any, y: Any) -> bool:
        if torch.is_tensor(x) and torch.is_tensor(y):
            return x.shape == y.shape and torch.equal(x, y)
        return x == y

    return same(a.arguments[sample_arg], b.arguments[sample_arg]) and same(
        a.arguments[timestep_arg], b.arguments[timestep_arg])


def pipeline_denoiser(
    pipe: Any,
    prompt: str | list[str],
    *,
    guidance_scale: float | None = None,
    model: str | None = None,
    **call_kwargs: Any,
) -> PipelineDenoiser:
    """The VE denoiser of ``pipe`` under ``prompt`` (one or several) and ``guidance_scale``.

    ``call_kwargs`` go to the pipeline call that captures the conditioning (``height``,
    ``width``, ``negative_prompt``, ``audio_length_in_s``, ...), so the latent shape is the
    one these arguments give. ``model`` names the model in the coefficient file (default: the
    pipeline's ``_name_or_path``, else its class name); pass the same to
    ``AdaSDEScheduler.from_file(..., model=...)``. Refused, with the reason: ControlNet
    pipelines (the control residuals depend on the latent, so a captured call cannot be
    replayed), pipelines accelerated by SADA (it would skip calls), and a pipeline whose
    scheduler is already an ``AdaSDEScheduler`` (the base schedule is needed).
    """
    from ..api import is_accelerated
    from .scheduler import AdaSDEScheduler

    name = type(pipe).__name__
    plugin = find_plugin(pipe)
    if plugin.control_modules(pipe):
        raise UnsupportedPipelineError(
            f"{name}: AdaSDE distillation cannot replay a ControlNet pipeline's denoiser (its control residuals "
            "depend on the latent at every call); distil on the base pipeline with the same model and prompts, "
            "the coefficients then load into the ControlNet pipeline"
        )
    if is_accelerated(pipe):
        raise UnsupportedPipelineError(f"{name} is accelerated by SADA; call sadakit.remove(pipe) before distilling")
    if isinstance(pipe.scheduler, AdaSDEScheduler):
        raise UnsupportedPipelineError(
            f"{name}: the scheduler is already an AdaSDEScheduler; distil with the pipeline's original scheduler"
        )
    for key in ("prompt", "num_images_per_prompt", "num_waveforms_per_prompt", "output_type", "latents"):
        if key in call_kwargs:
            raise ValueError(f"pipeline_denoiser: {key!r} is set by the adapter; remove it from the call arguments")
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"prompt must be a string or a non-empty list of strings, got {prompt!r}")
    spec = plugin.denoiser(pipe)
    chart = ModelChart.from_scheduler(pipe.scheduler)
    accepted = inspect.signature(pipe.__call__).parameters
    kwargs = dict(call_kwargs, prompt=prompts)
    for key, value in (("num_images_per_prompt", 1), ("num_waveforms_per_prompt", 1), ("output_type", "latent")):
        if key in accepted:
            kwargs[key] = value
    if guidance_scale is not None:
        kwargs["guidance_scale"] = guidance_scale
    plugin.prepare(pipe)  # library compatibility shims (e.g. MusicLDM's CLAP under transformers 5)
    try:
        seen = _capture(pipe, spec.module, kwargs)
    finally:
        plugin.restore(pipe)
    bound, uncond_bound = seen.calls[0], None
    if len(seen.calls) == 2 and _same_input(*seen.calls, spec.sample_arg, spec.timestep_arg):
        uncond_bound = seen.calls[1]  # one call per CFG branch: conditional first, as Flux and Wan call them
    elif len(seen.calls) > 1:
        raise UnsupportedPipelineError(
            f"{name}: the denoiser is called {len(seen.calls)} times per step in a way the adapter cannot replay "
            "(only one call, or one per CFG branch at the same latent and timestep)")
    if uncond_bound is not None and "true_cfg_scale" in accepted:
        # Flux-style true CFG: the branches are combined at true_cfg_scale (guidance_scale is the
        # embedded guidance, already part of the captured calls)
        guidance = float(kwargs.get("true_cfg_scale", accepted["true_cfg_scale"].default))
    else:
        guidance = guidance_scale if guidance_scale is not None else _pipeline_default_guidance(pipe)
    if uncond_bound is not None:
        _check_branch_combination(name, seen, guidance)
    first_t = bound.arguments[spec.timestep_arg]
    first_t = float(first_t.reshape(-1)[0]) if torch.is_tensor(first_t) else float(first_t)
    reference = float(pipe.scheduler.timesteps[0])
    if reference == 0.0 or not math.isfinite(first_t / reference):
        raise UnsupportedPipelineError(f"{name}: cannot relate the denoiser's timestep to the scheduler's")
    scale = first_t / reference
    for exact in (1.0, 1e-3):  # VP UNets get the index itself, Flux gets t / 1000
        if math.isclose(scale, exact, rel_tol=1e-4):
            scale = exact
    return PipelineDenoiser(
        pipe, spec.module, bound, sample_arg=spec.sample_arg, timestep_arg=spec.timestep_arg,
        output_field=spec.output_field, chart=chart, prompts=len(prompts), guidance_scale=guidance,
        timestep_scale=scale, model=model or _model_name(pipe), unbatched_args=spec.unbatched_args,
        uncond_bound=uncond_bound,
    )


def _check_branch_combination(name: str, seen: _Captured, guidance: float) -> None:
    """Refuse a two-call pipeline whose guided prediction is not ``u + g (c - u)`` (e.g. a renormalised CFG).

    The adapter replays the two calls and combines them that way; a pipeline that rescales the
    result (QwenImage's true CFG keeps the conditional norm) computes another function, and a file
    distilled on ours would be fitted to the wrong one.
    """
    if seen.combined is None or len(seen.outputs) != 2:
        return
    cond, uncond = (o.to(torch.float32) for o in seen.outputs)
    ours = uncond + guidance * (cond - uncond)
    theirs = seen.combined.to(torch.float32)
    if ours.shape != theirs.shape or not torch.allclose(ours, theirs, rtol=1e-3, atol=1e-4 * float(theirs.abs().max())):
        raise UnsupportedPipelineError(
            f"{name}: its two denoiser calls per step (one per CFG branch) are not combined as u + {guidance:g} (c - u) "
            "(a rescaled or normalised guidance?), so the adapter cannot reproduce the guided denoiser; distil with "
            "that guidance off (e.g. true_cfg_scale=1)")


def _pipeline_default_guidance(pipe: Any) -> float:
    """The guidance scale the pipeline's call used by default (its signature's default)."""
    default = inspect.signature(pipe.__call__).parameters.get("guidance_scale")
    if default is None or default.default is inspect.Parameter.empty:
        raise ValueError(f"{type(pipe).__name__}: pass guidance_scale= explicitly")
    return float(default.default)


def distill_pipeline(
    pipe: Any,
    prompt: str | list[str],
    config: DistillConfig = DistillConfig(),
    *,
    guidance_scale: float | None = None,
    model: str | None = None,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    call_kwargs: dict[str, Any] | None = None,
    checkpoint_calls: bool = False,
    **distill_kwargs: Any,
) -> DistillResult:
    """Distil AdaSDE coefficients for ``pipe`` under its own conditioning.

    The sigma range defaults to the model's (VP: its training schedule; flow: tau 0.002-0.99);
    ``config``'s ``sigma_min``/``sigma_max`` are replaced by it unless passed here. Flow models
    need ``config.analytic_first_step=False``. ``distill_kwargs`` go to :func:`distill`
    (``output``, ``log_path``, ``resume``, ``feature_loss``, ...). The denoiser's weights are
    excluded from autograd during the run and restored afterwards. ``checkpoint_calls=True``
    trades one extra forward per student call for not keeping its activations (large models).
    """
    import attrs

    adapter = pipeline_denoiser(pipe, prompt, guidance_scale=guidance_scale, model=model, **(call_kwargs or {}))
    adapter.checkpoint_calls = checkpoint_calls
    if adapter.chart.flow_matching and config.analytic_first_step:
        raise ValueError(
            f"{type(pipe).__name__} is a flow-matching pipeline: its first model call cannot be moved to the "
            "analytic first step; use DistillConfig(analytic_first_step=False)"
        )
    lo, hi = adapter.sigma_range
    config = attrs.evolve(config, sigma_min=sigma_min or max(lo, 1e-4), sigma_max=sigma_max or hi)
    with adapter.frozen():
        return distill(
            adapter, adapter.sample_noise, config, model=adapter.model, prediction_type=adapter.prediction_type,
            guidance_scale=adapter.guidance_scale, **distill_kwargs,
        )
