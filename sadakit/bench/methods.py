"""The accelerators ``sadakit bench`` compares, each as apply / remove around the same pipeline.

A method spec is ``name`` or ``name:knob`` (``fbcache:0.5``, ``deepcache:3``, ``fewer-steps:0.5``),
or a knob sweep ``name:k1,k2,...`` (``fbcache:0.2,0.4,0.6``) that expands to one method per knob,
so the table and the plot show each peer's speed-vs-fidelity curve instead of one point.
A method that cannot serve a pipeline says why in ``not_applicable``; the bench lists it with
that reason instead of dropping it.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any, Callable

import sadakit


def _separate_cfg_calls(pipe: Any, kwargs: dict) -> bool:
    """Whether ``pipe`` calls its transformer once per CFG branch with these call arguments:
    Wan with ``guidance_scale > 1``; Flux, HunyuanVideo and the like with ``true_cfg_scale > 1``
    and a negative prompt (their own rule for true CFG)."""
    import inspect

    def argument(name: str) -> Any:
        if name in kwargs:
            return kwargs[name]
        parameter = inspect.signature(pipe.__call__).parameters.get(name)
        return None if parameter is None or parameter.default is inspect.Parameter.empty else parameter.default

    if _family(pipe) == "wan":
        return float(argument("guidance_scale") or 1.0) > 1.0
    true_cfg = argument("true_cfg_scale")
    negative = kwargs.get("negative_prompt") is not None or kwargs.get("negative_prompt_embeds") is not None
    return true_cfg is not None and float(true_cfg) > 1.0 and negative


def _family(pipe: Any) -> str | None:
    """The family the plugin registry gives ``pipe`` (None: no plugin claims it)."""
    from ..registry import family_of

    return family_of(pipe)


def _missing(module: str, extra: str = "peers") -> str | None:
    if importlib.util.find_spec(module) is None:
        return f"package {module!r} is not installed (pip install 'sadakit[{extra}]')"
    return None


def drop_restored_forwards(root: Any) -> None:
    """Delete instance-level ``forward`` attributes that are just the module's own class forward.

    diffusers' ``HookRegistry.remove_hook`` and DeepCache's ``disable`` "restore" a module by
    assigning its bound class forward as an instance attribute; behaviour is the same, but the
    module is not as it was (and a later patcher that saves/restores ``forward`` sees it).
    """
    for module in root.modules():
        bound = module.__dict__.get("forward")
        if bound is not None and getattr(bound, "__func__", None) is type(module).forward \
                and getattr(bound, "__self__", None) is module:
            del module.__dict__["forward"]


@dataclass
class Method:
    """One accelerator with its knob."""

    name: str
    knob: float | None = None
    _state: dict = field(default_factory=dict, repr=False)

    @property
    def label(self) -> str:
        return self.name if self.knob is None else f"{self.name}:{self.knob:g}"

    def not_applicable(self, pipe: Any) -> str | None:
        return None

    def not_applicable_to_call(self, pipe: Any, kwargs: dict) -> str | None:
        """Why this method cannot serve the bench's calls (``kwargs``: the pipeline's call
        arguments), when the pipeline alone does not say it; None if it can."""
        return None

    def prepare(self, pipe: Any, kwargs: dict) -> None:
        """One untimed set-up generation before the bench (only MagCache's calibration uses it)."""

    def apply(self, pipe: Any) -> None:
        pass

    def remove(self, pipe: Any) -> None:
        pass

    def call_kwargs(self, kwargs: dict) -> dict:
        """Changes to the pipeline call (fewer steps; AdaSDE runs at its file's NFE)."""
        return kwargs

    def report(self, pipe: Any) -> dict:
        return {}


class Baseline(Method):
    pass


class FewerSteps(Method):
    """The trivial accelerator every method must beat: the same pipeline with fewer steps."""

    def call_kwargs(self, kwargs: dict) -> dict:
        ratio = self.knob if self.knob is not None else 0.5
        return {**kwargs, "num_inference_steps": max(1, round(kwargs["num_inference_steps"] * ratio))}


class SADA(Method):
    """sadakit's SADA with the family defaults (``sada``) or criterion only (``sada-criterion``);
    a caller comparing one configuration sets ``config`` (then it wins over the name)."""

    config: Any = None

    def not_applicable(self, pipe: Any) -> str | None:
        try:
            sadakit.registry.find_plugin(pipe)
        except sadakit.UnsupportedPipelineError as err:
            return str(err).split(".")[0]
        return None

    def apply(self, pipe: Any) -> None:
        if self.config is not None:
            sadakit.accelerate(pipe, self.config)
            return
        config = sadakit.default_config(pipe)
        if self.name == "sada-criterion":
            config = sadakit.SADAConfig.criterion_only()
        if self.name in ("sada-budget", "sada-even"):  # the knob: fraction of the calls computed (SADAConfig.budget)
            import attrs

            config = attrs.evolve(config, budget=self.knob if self.knob is not None else 0.5)
            if self.name == "sada-even":  # the same calls spread evenly, none reserved for the end
                config = attrs.evolve(config, budget_spread="even", final_calls=0)
        elif self.knob is not None:  # late-phase interval
            import attrs

            config = attrs.evolve(config, late_phase_interval=int(self.knob))
        sadakit.accelerate(pipe, config)

    def remove(self, pipe: Any) -> None:
        sadakit.remove(pipe)

    def report(self, pipe: Any) -> dict:
        """The runtime's report, plus the FLOPs ratio and the fraction of (call, row) pairs computed
        (SADA decides per sample: a call can run for some rows only)."""
        rep = sadakit.report(pipe)
        saved = rep.flops_saved_fraction
        return {**rep.to_dict(), "flops_ratio": None if saved is None else 1.0 - saved,
                "computed_row_fraction": sum(rep.per_sample_computed) / max(1, rep.denoiser_calls * rep.batch_size)}


class AdaSDE(Method):
    """A learned AdaSDE scheduler from a coefficient file (``adasde`` needs ``--adasde-file``).

    The file fixes the number of network evaluations, so the pipeline is called with the file's
    NFE instead of ``--steps`` (the row's denoiser forwards show it). A caller with a scheduler
    already built (the bundled models' shipped files) sets ``scheduler`` instead of the file.
    """

    coefficient_file: str | None = None
    scheduler: Any = None

    def not_applicable(self, pipe: Any) -> str | None:
        if self.scheduler is not None:
            return None
        if not self.coefficient_file:
            return "no coefficient file given (--adasde-file)"
        try:
            from sadakit.adasde import AdaSDEScheduler

            AdaSDEScheduler.from_file(self.coefficient_file, pipe.scheduler)
        except Exception as err:  # a mismatching file is a reason, not a crash
            return f"coefficient file does not fit: {err}"
        return None

    def apply(self, pipe: Any) -> None:
        from sadakit.adasde import AdaSDEScheduler

        self._state["scheduler"] = pipe.scheduler
        pipe.scheduler = self.scheduler or AdaSDEScheduler.from_file(self.coefficient_file, self._state["scheduler"])
        self._state["nfe"] = int(pipe.scheduler.meta.nfe)

    def call_kwargs(self, kwargs: dict) -> dict:
        return {**kwargs, "num_inference_steps": self._state["nfe"]}

    def remove(self, pipe: Any) -> None:
        if "scheduler" in self._state:
            pipe.scheduler = self._state.pop("scheduler")


class DiffusersCache(Method):
    """diffusers' built-in cache hooks (``CacheMixin.enable_cache``) on transformer pipelines.

    FasterCache's block hook skips attention from its first call whenever the current timestep
    lies inside ``spatial_attention_timestep_skip_range``, and on a guidance-distilled model it
    then reads an empty cache (``TypeError: 'NoneType' object is not subscriptable``). The range
    must leave the first step outside it; we use diffusers' documented ``(-1, 681)`` (Flux's
    first timestep is 1000), so the first ~third of the steps fill the cache.
    """

    # caches whose hooks read a state the pipeline selects with ``transformer.cache_context``
    NEEDS_CACHE_CONTEXT = ("fbcache", "taylorseer")

    def _timestep(self) -> float:
        """The current timestep on diffusers' 0-1000 scale, as the transformer last received it
        (recorded by a pre-hook: not every pipeline keeps ``current_timestep``, e.g. Flux ControlNet)."""
        t = self._state.get("timestep")
        return 1000.0 if t is None else float(t)

    def _record_timestep(self, module: Any, args: tuple, kwargs: dict) -> None:
        t = kwargs.get("timestep")
        if t is not None:
            # Flux pipelines pass t / 1000 (the transformer multiplies by 1000 again)
            self._state["timestep"] = float(t.flatten()[0]) * (1000.0 if (_family(self._state["pipe"]) or "").startswith("flux") else 1.0)

    def _config(self):
        import diffusers

        if self.name == "fbcache":
            return diffusers.FirstBlockCacheConfig(threshold=self.knob if self.knob is not None else 0.5)
        if self.name == "taylorseer":
            return diffusers.TaylorSeerCacheConfig(cache_interval=int(self.knob or 3), taylor_factors_dtype=None)
        if self.name == "pab":
            return diffusers.PyramidAttentionBroadcastConfig(
                spatial_attention_block_skip_range=int(self.knob or 2),
                spatial_attention_timestep_skip_range=(-1, 1001),
                current_timestep_callback=self._timestep,
            )
        if self.name == "fastercache":
            return diffusers.FasterCacheConfig(
                spatial_attention_block_skip_range=int(self.knob or 2),
                spatial_attention_timestep_skip_range=(-1, 681),
                current_timestep_callback=self._timestep,
                attention_weight_callback=lambda _module: 0.5,
                # Flux and HunyuanVideo run one (guidance-embedded) branch per call
                is_guidance_distilled=True,
                tensor_format="BCFHW" if _family(self._state["pipe"]) == "hunyuan_video" else "BCHW",
            )
        if self.name == "magcache":
            if "ratios" not in self._state:
                raise RuntimeError("MagCache has no magnitude ratios yet: prepare() calibrates them first")
            return diffusers.MagCacheConfig(
                threshold=self.knob if self.knob is not None else 0.06,
                num_inference_steps=self._state["steps"], mag_ratios=self._state["ratios"],
            )
        raise ValueError(f"unknown diffusers cache {self.name!r}")

    #: the families the timestep callback and layout are set up for
    FAMILIES = ("flux", "flux-controlnet", "wan", "hunyuan_video")

    def not_applicable(self, pipe: Any) -> str | None:
        denoiser = getattr(pipe, "transformer", None)
        if denoiser is None or not hasattr(denoiser, "enable_cache"):
            denoiser_kind = "a UNet" if hasattr(pipe, "unet") else "no transformer"
            return f"diffusers' cache hooks need a CacheMixin transformer; {type(pipe).__name__} has {denoiser_kind}"
        family = _family(pipe)
        if family not in self.FAMILIES:
            return (f"the bench configures diffusers' caches for Flux, Wan and HunyuanVideo DiTs (timestep callback, tensor "
                    f"layout); {type(pipe).__name__} is not one")
        if family == "wan" and self.name == "fastercache":
            return ("the bench sets FasterCache up for guidance-distilled Flux and HunyuanVideo (one branch per call, "
                    "their tensor layouts); Wan's CFG branches are separate calls, which FasterCache's guidance reuse "
                    "does not model")
        if self.name in self.NEEDS_CACHE_CONTEXT and not _sets_cache_context(pipe):
            import diffusers

            return (f"{type(pipe).__name__}.__call__ (diffusers {diffusers.__version__}) never enters "
                    f"transformer.cache_context(), which this cache's hooks need for their state")
        return None

    #: caches whose hooks keep one state per block for every call, not one per cache context
    ONE_STATE_PER_BLOCK = ("pab", "fastercache")

    def not_applicable_to_call(self, pipe: Any, kwargs: dict) -> str | None:
        if self.name in self.ONE_STATE_PER_BLOCK and _separate_cfg_calls(pipe, kwargs):
            what = ("PAB's hook keeps one attention cache per block" if self.name == "pab" else
                    "the bench sets FasterCache up for guidance-distilled models (one branch per call), and its hooks keep "
                    "one cache per block")
            return (f"{what}, not one per CFG branch; {type(pipe).__name__} makes separate calls for the cond and "
                    "uncond branches here, so the uncond call would reuse the cond call's attention (on bundled:shapes-dit "
                    "with true CFG: 15.5 dB and 44% adherence for PAB, 48.3 dB without CFG)")
        return None

    def prepare(self, pipe: Any, kwargs: dict) -> None:
        """MagCache needs per-model magnitude ratios: one calibration generation (no skipping)."""
        if self.name != "magcache":
            return
        import diffusers

        steps = int(kwargs["num_inference_steps"])
        ratios: list[float] = []
        pipe.transformer.enable_cache(diffusers.MagCacheConfig(calibrate=True, num_inference_steps=steps))
        try:
            hooks = [h for m in pipe.transformer.modules() for h in getattr(getattr(m, "_diffusers_hook", None), "hooks", {}).values()
                     if hasattr(h, "_perform_calibration_step")]
            if not hooks:
                raise RuntimeError("diffusers' MagCache exposes no calibration hook (API changed?)")
            for hook in hooks:
                original = hook._perform_calibration_step

                def record(state, residual, _original=original):
                    _original(state, residual)
                    ratios.append(state.calibration_ratios[-1])

                hook._perform_calibration_step = record
            call_pipeline_quietly(pipe, kwargs)
        finally:
            pipe.transformer.disable_cache()
        if len(ratios) == 2 * steps:  # CFG as two calls per step (cond, uncond): one ratio per step, the cond call's
            ratios = ratios[0::2]
        if len(ratios) != steps:
            raise RuntimeError(f"MagCache calibration recorded {len(ratios)} ratios for {steps} steps")
        self._state.update(steps=steps, ratios=ratios)

    def apply(self, pipe: Any) -> None:
        self._state.update(pipe=pipe, timestep=None)
        self._state["handle"] = pipe.transformer.register_forward_pre_hook(self._record_timestep, with_kwargs=True)
        pipe.transformer.enable_cache(self._config())

    def remove(self, pipe: Any) -> None:
        handle = self._state.pop("handle", None)
        if handle is not None:
            handle.remove()
        if pipe.transformer.is_cache_enabled:
            pipe.transformer.disable_cache()
        drop_restored_forwards(pipe.transformer)


def _sets_cache_context(pipe: Any) -> bool:
    """Whether the pipeline's ``__call__`` selects the cache state (FirstBlockCache and TaylorSeer
    raise "No cache context is set" otherwise)."""
    import inspect

    try:
        return "cache_context" in inspect.getsource(type(pipe).__call__)
    except (OSError, TypeError):  # no source: assume it does, a failure is still reported
        return True


def call_pipeline_quietly(pipe: Any, kwargs: dict) -> None:
    """One generation whose output is not needed (calibration); images stay tensors."""
    pipe(output_type="latent", **kwargs)


class DeepCache(Method):
    """DeepCache (Ma et al., 2024) on SD/SDXL UNets: reuse deep UNet features every N steps."""

    def not_applicable(self, pipe: Any) -> str | None:
        from diffusers import UNet2DConditionModel

        if not isinstance(getattr(pipe, "unet", None), UNet2DConditionModel):
            return f"DeepCache's helper patches a UNet2DConditionModel; {type(pipe).__name__} has none"
        return _missing("DeepCache")

    def apply(self, pipe: Any) -> None:
        from DeepCache import DeepCacheSDHelper

        helper = DeepCacheSDHelper(pipe=pipe)
        helper.set_params(cache_interval=int(self.knob or 3), cache_branch_id=0)
        helper.enable()
        self._state["helper"] = helper

    def remove(self, pipe: Any) -> None:
        helper = self._state.pop("helper", None)
        if helper is not None:
            helper.disable()
            drop_restored_forwards(pipe.unet)


class ToMeSD(Method):
    """Token Merging for SD (Bolya & Hoffman, 2023)."""

    def not_applicable(self, pipe: Any) -> str | None:
        unet = getattr(pipe, "unet", None)
        if unet is None or not any(type(m).__name__ == "BasicTransformerBlock" for m in unet.modules()):
            return f"tomesd merges tokens in a UNet's BasicTransformerBlocks; {type(pipe).__name__} has none"
        return _missing("tomesd")

    def apply(self, pipe: Any) -> None:
        import tomesd

        tomesd.apply_patch(pipe, ratio=self.knob if self.knob is not None else 0.5, max_downsample=2)

    def remove(self, pipe: Any) -> None:
        import tomesd

        tomesd.remove_patch(pipe)


class CacheDiT(Method):
    """cache-dit's DBCache on DiT pipelines (Fn=1 compute block, residual-diff threshold).

    ``cache_dit.disable_cache`` leaves the transformer changed: its own forward stays as an
    instance attribute (``_is_patched``) and the block lists are deleted and re-added, which
    moves them to the end of ``_modules``. diffusers' FirstBlockCache/MagCache take the first
    block of ``named_children()`` as their head block, so after cache-dit they hooked a single
    block as head and failed on the double blocks (``head_block_output`` None). ``remove``
    restores the child order and drops the leftovers.
    """

    def not_applicable(self, pipe: Any) -> str | None:
        if _family(pipe) == "flux-controlnet":
            # measured: at residual_diff_threshold 1e-5 (nothing cached) the output is 21 dB from the
            # baseline on tiny:flux-controlnet, 18 dB / SSIM 0.60 at 0.6 on the medium one
            return ("cache-dit's patched Flux forward does not reproduce FluxControlNetPipeline: even with "
                    "nothing cached its output departs from the baseline (21 dB PSNR), so its numbers would mislead")
        if _family(pipe) not in ("flux", "wan", "hunyuan_video"):
            return (f"the bench sets cache-dit up for Flux, Wan and HunyuanVideo transformers; "
                    f"{type(pipe).__name__} has none of them")
        return _missing("cache_dit")

    def apply(self, pipe: Any) -> None:
        import cache_dit

        transformer = pipe.transformer
        self._state["order"] = list(transformer._modules)
        self._state["attrs"] = {k: transformer.__dict__[k] for k in ("forward", "_is_patched") if k in transformer.__dict__}
        cache_dit.enable_cache(
            pipe,
            cache_config=cache_dit.DBCacheConfig(
                Fn_compute_blocks=1, Bn_compute_blocks=0, max_warmup_steps=2,
                residual_diff_threshold=self.knob if self.knob is not None else 0.6,
            ),
        )

    def remove(self, pipe: Any) -> None:
        import cache_dit

        cache_dit.disable_cache(pipe)
        transformer = pipe.transformer
        order = self._state.pop("order", None)
        if order is not None and list(transformer._modules) != order:
            modules = transformer._modules
            reordered = {name: modules[name] for name in order if name in modules}
            reordered.update({name: m for name, m in modules.items() if name not in reordered})
            modules.clear()
            modules.update(reordered)
        saved = self._state.pop("attrs", {})
        for name in ("forward", "_is_patched"):  # cache-dit's patched forward stays after disable
            if name in saved:
                transformer.__dict__[name] = saved[name]
            else:
                transformer.__dict__.pop(name, None)


METHODS: dict[str, Callable[..., Method]] = {
    "baseline": Baseline,
    "fewer-steps": FewerSteps,
    "sada": SADA,
    "sada-criterion": SADA,
    "sada-budget": SADA,
    "sada-even": SADA,
    "adasde": AdaSDE,
    "fbcache": DiffusersCache,
    "taylorseer": DiffusersCache,
    "pab": DiffusersCache,
    "fastercache": DiffusersCache,
    "magcache": DiffusersCache,
    "deepcache": DeepCache,
    "tomesd": ToMeSD,
    "cache-dit": CacheDiT,
}

DEFAULT_METHODS = [
    "fewer-steps:0.5", "sada", "sada-criterion", "adasde", "fbcache:0.5", "taylorseer:3", "pab:2",
    "fastercache:2", "magcache:0.06", "deepcache:3", "tomesd:0.5", "cache-dit:0.6",
]

# Knobs for ``--sweep``: from mild to aggressive, so each peer draws a speed-vs-fidelity curve.
# (Default thresholds of the residual-based caches never trigger on random weights, see
# FIELD-NOTES, hence the wide ranges.)
SWEEPS: dict[str, list[float]] = {
    "fewer-steps": [0.75, 0.5, 0.3],
    "sada": [2, 3, 4],
    "fbcache": [0.2, 0.4, 0.6],
    "taylorseer": [2, 3, 5],
    "pab": [2, 3, 4],
    "fastercache": [2, 3, 4],
    "magcache": [0.06, 0.12, 0.24],
    "deepcache": [2, 3, 5],
    "tomesd": [0.3, 0.5, 0.7],
    "cache-dit": [0.3, 0.6, 0.9],
}


def default_methods(sweep: bool = False) -> list[str]:
    """Every method at its default knob, or (``sweep``) every method by bare name, so that
    :func:`expand_specs` gives each its :data:`SWEEPS` knobs."""
    if not sweep:
        return list(DEFAULT_METHODS)
    return list(dict.fromkeys(spec.partition(":")[0] for spec in DEFAULT_METHODS))


def parse_method(spec: str, adasde_file: str | None = None) -> Method:
    """``name`` or ``name:knob`` -> Method; unknown names list the allowed ones."""
    name, _, knob = spec.partition(":")
    if name not in METHODS:
        raise ValueError(f"unknown bench method {name!r}; allowed: {', '.join(METHODS)}")
    if "," in knob:
        raise ValueError(f"bench method {spec!r} is a sweep; expand it with expand_specs first")
    try:
        value = float(knob) if knob else None
    except ValueError:
        raise ValueError(f"bench method {spec!r}: the knob after ':' must be a number") from None
    if name in ("baseline", "sada-criterion", "adasde") and value is not None:
        raise ValueError(f"bench method {name!r} has no knob (got {spec!r})")
    method = METHODS[name](name=name, knob=value)
    if isinstance(method, AdaSDE):
        method.coefficient_file = adasde_file
    return method


def expand_specs(specs: list[str], sweep: bool = False) -> list[str]:
    """Expand ``name:k1,k2`` into one spec per knob; with ``sweep``, a bare ``name`` takes
    the knobs of :data:`SWEEPS`. Duplicates are dropped, order kept; bad knobs fail here."""
    out: list[str] = []
    for spec in specs:
        name, sep, knobs = spec.partition(":")
        if sep and not knobs:
            raise ValueError(f"bench method {spec!r}: nothing after ':'")
        if knobs:
            values = [k.strip() for k in knobs.split(",")]
            if any(not v for v in values):
                raise ValueError(f"bench method {spec!r}: empty knob in the list")
            expanded = [f"{name}:{v}" for v in values]
        elif sweep and name in SWEEPS:
            expanded = [f"{name}:{v:g}" for v in SWEEPS[name]]
        else:
            expanded = [name]
        for item in expanded:
            label = parse_method(item).label  # validates; "0.50" and "0.5" are one method
            if label not in out:
                out.append(label)
    return out
