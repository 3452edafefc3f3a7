"""The accelerators ``sadakit bench`` compares, each as apply / remove around the same pipeline.

A method spec is ``name`` or ``name:knob`` (``fbcache:0.5``, ``deepcache:3``, ``fewer-steps:0.5``).
A method that cannot serve a pipeline says why in ``not_applicable``; the bench lists it with
that reason instead of dropping it.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any, Callable

import sadakit


def _family(pipe: Any) -> str:
    name = type(pipe).__name__
    if "ControlNet" in name:
        return "flux-controlnet" if "Flux" in name else "unet-controlnet"
    if "Flux" in name:
        return "flux"
    if "MusicLDM" in name or "AudioLDM" in name:
        return "audio"
    if "StableDiffusion" in name:
        return "unet-image"
    return "other"


def _missing(module: str, extra: str = "peers") -> str | None:
    if importlib.util.find_spec(module) is None:
        return f"package {module!r} is not installed (pip install 'sadakit[{extra}]')"
    return None


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

    def apply(self, pipe: Any) -> None:
        pass

    def remove(self, pipe: Any) -> None:
        pass

    def call_kwargs(self, kwargs: dict) -> dict:
        """Changes to the pipeline call (only the fewer-steps baseline uses this)."""
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
    """sadakit's SADA with the family defaults (``sada``) or criterion only (``sada-criterion``)."""

    def not_applicable(self, pipe: Any) -> str | None:
        try:
            sadakit.registry.find_plugin(pipe)
        except sadakit.UnsupportedPipelineError as err:
            return str(err).split(".")[0]
        return None

    def apply(self, pipe: Any) -> None:
        config = sadakit.default_config(pipe)
        if self.name == "sada-criterion":
            config = sadakit.SADAConfig.criterion_only()
        if self.knob is not None:  # late-phase interval
            import attrs

            config = attrs.evolve(config, late_phase_interval=int(self.knob))
        sadakit.accelerate(pipe, config)

    def remove(self, pipe: Any) -> None:
        sadakit.remove(pipe)

    def report(self, pipe: Any) -> dict:
        rep = sadakit.report(pipe)
        return {"network_calls": rep.network_calls, "decisions": rep.decisions}


class AdaSDE(Method):
    """A learned AdaSDE scheduler from a coefficient file (``adasde`` needs ``--adasde-file``)."""

    coefficient_file: str | None = None

    def not_applicable(self, pipe: Any) -> str | None:
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
        pipe.scheduler = AdaSDEScheduler.from_file(self.coefficient_file, self._state["scheduler"])

    def remove(self, pipe: Any) -> None:
        if "scheduler" in self._state:
            pipe.scheduler = self._state.pop("scheduler")


class DiffusersCache(Method):
    """diffusers' built-in cache hooks (``CacheMixin.enable_cache``) on transformer pipelines."""

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
                current_timestep_callback=lambda: self._state["pipe"]._current_timestep or 0,
            )
        if self.name == "fastercache":
            return diffusers.FasterCacheConfig(
                spatial_attention_block_skip_range=int(self.knob or 2),
                spatial_attention_timestep_skip_range=(-1, 1001),
                current_timestep_callback=lambda: self._state["pipe"]._current_timestep or 0,
                is_guidance_distilled=True,
                tensor_format="BCHW",
            )
        raise ValueError(f"unknown diffusers cache {self.name!r}")

    def not_applicable(self, pipe: Any) -> str | None:
        denoiser = getattr(pipe, "transformer", None)
        if denoiser is None or not hasattr(denoiser, "enable_cache"):
            return f"diffusers' cache hooks need a CacheMixin transformer; {type(pipe).__name__} has a UNet"
        return None

    def apply(self, pipe: Any) -> None:
        self._state["pipe"] = pipe
        pipe.transformer.enable_cache(self._config())

    def remove(self, pipe: Any) -> None:
        pipe.transformer.disable_cache()


class DeepCache(Method):
    """DeepCache (Ma et al., 2024) on SD/SDXL UNets: reuse deep UNet features every N steps."""

    def not_applicable(self, pipe: Any) -> str | None:
        if _family(pipe) not in ("unet-image", "unet-controlnet"):
            return f"DeepCache's helper patches Stable Diffusion UNets; {type(pipe).__name__} is not one"
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
            # DeepCache "restores" by assigning the bound methods back as instance attributes;
            # drop them so the modules are exactly as before (class forward, no instance override)
            for module in pipe.unet.modules():
                bound = module.__dict__.get("forward")
                if bound is not None and getattr(bound, "__func__", None) is type(module).forward:
                    del module.__dict__["forward"]


class ToMeSD(Method):
    """Token Merging for SD (Bolya & Hoffman, 2023)."""

    def not_applicable(self, pipe: Any) -> str | None:
        if _family(pipe) != "unet-image":
            return f"tomesd patches Stable Diffusion UNet transformer blocks; {type(pipe).__name__} is not supported"
        return _missing("tomesd")

    def apply(self, pipe: Any) -> None:
        import tomesd

        tomesd.apply_patch(pipe, ratio=self.knob if self.knob is not None else 0.5, max_downsample=2)

    def remove(self, pipe: Any) -> None:
        import tomesd

        tomesd.remove_patch(pipe)


class CacheDiT(Method):
    """cache-dit's DBCache on DiT pipelines (Fn=1 compute block, residual-diff threshold)."""

    def not_applicable(self, pipe: Any) -> str | None:
        if _family(pipe) != "flux":
            return f"cache-dit serves DiT pipelines; {type(pipe).__name__} is not one"
        return _missing("cache_dit")

    def apply(self, pipe: Any) -> None:
        import cache_dit

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


METHODS: dict[str, Callable[..., Method]] = {
    "baseline": Baseline,
    "fewer-steps": FewerSteps,
    "sada": SADA,
    "sada-criterion": SADA,
    "adasde": AdaSDE,
    "fbcache": DiffusersCache,
    "taylorseer": DiffusersCache,
    "pab": DiffusersCache,
    "fastercache": DiffusersCache,
    "deepcache": DeepCache,
    "tomesd": ToMeSD,
    "cache-dit": CacheDiT,
}

DEFAULT_METHODS = [
    "fewer-steps:0.5", "sada", "sada-criterion", "adasde", "fbcache:0.5", "taylorseer:3", "pab:2",
    "fastercache:2", "deepcache:3", "tomesd:0.5", "cache-dit:0.6",
]


def parse_method(spec: str, adasde_file: str | None = None) -> Method:
    """``name`` or ``name:knob`` -> Method; unknown names list the allowed ones."""
    name, _, knob = spec.partition(":")
    if name not in METHODS:
        raise ValueError(f"unknown bench method {name!r}; allowed: {', '.join(METHODS)}")
    try:
        value = float(knob) if knob else None
    except ValueError:
        raise ValueError(f"bench method {spec!r}: the knob after ':' must be a number") from None
    method = METHODS[name](name=name, knob=value)
    if isinstance(method, AdaSDE):
        method.coefficient_file = adasde_file
    return method
