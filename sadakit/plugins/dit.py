"""Declarative plugins for DiT pipelines: a transformer with lists of blocks over the latent's
tokens, on a flow-matching schedule.

Most DiT pipelines differ only in a few answers: which component is the denoiser, what its
call names the latent and the timestep, how the timestep maps to flow time, how the latent's
tokens lie on a grid, which block classes run over those tokens and which of their arguments
are indexed by token. A :class:`DiTFamily` holds those answers; :class:`DiTPlugin` answers the
contract's questions from a table of them, so that adding the next DiT is one declaration. A
pipeline that genuinely differs writes its own plugin.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

from ..config import SADAConfig
from ..core.parameterization import FlowParameterization, Parameterization
from ..errors import UnsupportedPipelineError
from ..hookspecs import hookimpl
from ..spec import DenoiserSpec, LatentToGrid, OtherTokens, TokenArg, TokenBlockSpec

#: names the call stream of one denoiser call from its bound arguments (see DenoiserSpec.call_stream)
CallStream = Callable[[dict[str, Any]], "str | None"]


def is_flow_scheduler(scheduler: Any) -> bool:
    """Flow-matching schedulers name themselves so, or run a solver on flow sigmas."""
    config = getattr(scheduler, "config", {})
    return "FlowMatch" in type(scheduler).__name__ or (
        bool(config.get("use_flow_sigmas")) and config.get("prediction_type") == "flow_prediction")


@dataclass(frozen=True)
class BlockTokens:
    """How the blocks of one class take the latent's tokens, for a family whose block classes
    differ (Chroma's single-stream blocks see [text, image] in one sequence, its double-stream
    blocks the image alone; HunyuanVideo names its rotary table differently in each)."""

    block_class: type
    token_args: Mapping[str, TokenArg] = field(default_factory=dict)
    output_index: int | None = None  # the image tokens' position in the block's tuple output
    hidden_arg: str = "hidden_states"
    other_tokens: OtherTokens | None = None  # tokens of the hidden states beyond the grid's


@dataclass(frozen=True)
class DiTFamily:
    """Everything a DiT pipeline family needs to say to be accelerated."""

    family: str  # short name, in the report
    pipelines: tuple[str, ...]  # pipeline class names (exact class, not subclasses)
    #: the pipeline's latent-to-token-grid map, built per pipeline (it may read the transformer's config)
    latent_to_grid: Callable[[Any], LatentToGrid]
    block_classes: tuple[type, ...]  # the transformer's blocks over the latent tokens
    denoiser_attr: str = "transformer"
    sample_arg: str = "hidden_states"
    timestep_arg: str = "timestep"
    #: what the transformer receives as timestep, times this, is the flow time in [0, 1]
    timestep_scale: float = 1e-3
    hidden_arg: str = "hidden_states"
    token_args: Mapping[str, TokenArg] = field(default_factory=dict)
    output_index: int | None = None  # the image tokens' position in a block's tuple output
    #: block classes declared one by one (their own token arguments, output position, other
    #: tokens), besides ``block_classes``, which share the family-wide fields above
    blocks: tuple[BlockTokens, ...] = ()
    unbatched_args: frozenset[str] = frozenset()
    #: rows of one denoiser call that decide together (CFG batched into one call), or None
    cfg_groups: Callable[[Any, int], "list[list[int]] | None"] | None = None
    #: why a given pipeline cannot be served (checked before anything is applied), or None
    refuse: Callable[[Any], "str | None"] | None = None
    #: the scheduler to name when the pipeline's is not a flow-matching one
    scheduler_hint: str = "FlowMatchEulerDiscreteScheduler (the pipeline's own)"
    #: a family that is not flow matching (a VP or EDM DiT) gives its own parameterisation for
    #: the pipeline's current scheduler (raise UnsupportedPipelineError for one it cannot serve)
    parameterization: Callable[[Any], Parameterization] | None = None
    output_kind: str = "image"  # "image", "video" or "audio": what sadakit generate writes
    #: builds :attr:`DenoiserSpec.call_stream` for a pipeline that calls the denoiser once per
    #: CFG branch without diffusers' ``cache_context`` (e.g. ``lambda pipe:
    #: StreamsByRepeatedSample("hidden_states")``); called once per ``accelerate``, since such
    #: namers may keep state
    call_stream: Callable[[Any], CallStream] | None = None
    #: why one denoiser call cannot be served, from its bound arguments (a call the pipeline
    #: makes only under some options, e.g. SD3's skip-layer guidance), or None. Asked at every
    #: call made outside a cache context, where it raises UnsupportedPipelineError; a
    #: pipeline-wide refusal belongs in ``refuse``, which is asked before anything changes
    refuse_call: Callable[[dict[str, Any]], "str | None"] | None = None
    #: pipeline attributes holding further expert modules that take the denoiser's place at some
    #: steps (:attr:`sadakit.DenoiserSpec.experts`; Wan 2.2 A14B's ``transformer_2``); an
    #: attribute set to None is left out
    expert_attrs: tuple[str, ...] = ()
    #: the noisy channels at the start of the sample (:attr:`sadakit.DenoiserSpec.noisy_channels`)
    #: for a given pipeline, when it concatenates condition channels to them; None: all
    noisy_channels: Callable[[Any], "int | None"] | None = None


class DiTPlugin:
    """A pluggy plugin serving every :class:`DiTFamily` in its table."""

    def __init__(self, families: list[DiTFamily]) -> None:
        self.families = list(families)

    def _family(self, pipe: Any) -> DiTFamily | None:
        name = type(pipe).__name__
        return next((f for f in self.families if name in f.pipelines), None)

    def _of(self, pipe: Any) -> DiTFamily:
        family = self._family(pipe)
        if family is None:  # the registry asks only the plugin that claimed the pipeline
            raise UnsupportedPipelineError(f"{type(pipe).__name__} is not a DiT pipeline of this plugin")
        return family

    @hookimpl
    def sadakit_family(self, pipe: Any) -> str | None:
        family = self._family(pipe)
        return family.family if family is not None else None

    @hookimpl
    def sadakit_supported_pipelines(self) -> list[str]:
        return [name for f in self.families for name in f.pipelines]

    @hookimpl
    def sadakit_denoiser(self, pipe: Any) -> DenoiserSpec:
        family = self._of(pipe)
        return DenoiserSpec(
            module=getattr(pipe, family.denoiser_attr),
            sample_arg=family.sample_arg,
            timestep_arg=family.timestep_arg,
            latent_to_grid=family.latent_to_grid(pipe),
            output_field="sample",
            unbatched_args=family.unbatched_args,
            call_stream=_call_stream(family, pipe),
            experts=tuple(m for m in (getattr(pipe, a, None) for a in family.expert_attrs) if m is not None),
            noisy_channels=family.noisy_channels(pipe) if family.noisy_channels is not None else None,
        )

    @hookimpl
    def sadakit_parameterization(self, pipe: Any) -> Parameterization:
        family = self._of(pipe)
        if family.parameterization is not None:
            return family.parameterization(pipe)
        if not is_flow_scheduler(pipe.scheduler):
            raise UnsupportedPipelineError(
                f"{type(pipe).__name__}: scheduler {type(pipe.scheduler).__name__} is not a flow-matching scheduler, "
                f"but this model predicts a flow velocity; use {family.scheduler_hint} or a solver with "
                "use_flow_sigmas=True and prediction_type='flow_prediction'"
            )
        return FlowParameterization(timestep_scale=family.timestep_scale)

    @hookimpl
    def sadakit_cfg_groups(self, pipe: Any, batch_size: int):
        family = self._of(pipe)
        return family.cfg_groups(pipe, batch_size) if family.cfg_groups is not None else None

    @hookimpl
    def sadakit_token_blocks(self, pipe: Any, denoiser: torch.nn.Module) -> list[TokenBlockSpec]:
        """The blocks of ``denoiser`` (the transformer, or an expert) that are eligible."""
        family = self._of(pipe)
        shared = BlockTokens(object, family.token_args, family.output_index, family.hidden_arg)
        specs = []
        for name, module in denoiser.named_modules():
            if family.block_classes and isinstance(module, family.block_classes):
                how = shared
            else:
                how = next((b for b in family.blocks if isinstance(module, b.block_class)), None)
                if how is None:
                    continue
            specs.append(TokenBlockSpec(module=module, name=name, layout="exact", hidden_arg=how.hidden_arg,
                                        token_args=how.token_args, output_index=how.output_index,
                                        other_tokens=how.other_tokens))
        return specs

    @hookimpl
    def sadakit_output_kind(self, pipe: Any) -> str:
        return self._of(pipe).output_kind

    @hookimpl
    def sadakit_default_config(self, pipe: Any) -> SADAConfig:
        return SADAConfig()

    @hookimpl
    def sadakit_validate(self, pipe: Any, config: SADAConfig) -> None:
        family = self._of(pipe)
        reason = family.refuse(pipe) if family.refuse is not None else None
        if reason:
            raise UnsupportedPipelineError(f"{type(pipe).__name__}: {reason}")


def _call_stream(family: DiTFamily, pipe: Any) -> CallStream | None:
    """The family's stream namer, with its per-call refusal in front of it."""
    streams = family.call_stream(pipe) if family.call_stream is not None else None
    refuse = family.refuse_call
    if refuse is None:
        return streams
    pipeline = type(pipe).__name__  # the name only: the denoiser spec keeps no reference to the pipeline

    def name(arguments: dict[str, Any]) -> str | None:
        reason = refuse(arguments)
        if reason:
            raise UnsupportedPipelineError(f"{pipeline}: {reason}")
        return streams(arguments) if streams is not None else None

    return name


def patchified_grid(patch_attr: str = "patch_size", channels_dim: int = 1) -> Callable[[Any], LatentToGrid]:
    """A ``latent_to_grid`` for (B, C, *axes) latents patchified by the transformer's patch size
    (an int for every spatial axis, or a tuple per axis): the mean over channels, average-pooled
    over each patch, is the token grid."""

    def for_pipe(pipe: Any) -> LatentToGrid:
        patch = getattr(pipe.transformer.config, patch_attr)

        def to_grid(m: torch.Tensor, arguments: dict[str, Any]) -> torch.Tensor:
            per_element = m.mean(dim=channels_dim)
            axes = per_element.dim() - 1
            sizes = tuple(patch) if isinstance(patch, (tuple, list)) else (1,) * (axes - 2) + (int(patch),) * 2
            sizes = sizes[-axes:]
            if all(s == 1 for s in sizes):
                return per_element
            pool = {1: torch.nn.functional.avg_pool1d, 2: torch.nn.functional.avg_pool2d,
                    3: torch.nn.functional.avg_pool3d}[axes]
            return pool(per_element.unsqueeze(1), kernel_size=sizes, stride=sizes).squeeze(1)

        return to_grid

    return for_pipe


__all__ = ["BlockTokens", "CallStream", "DiTFamily", "DiTPlugin", "is_flow_scheduler", "patchified_grid"]
