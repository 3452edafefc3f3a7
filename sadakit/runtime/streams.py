"""Call streams: pipelines that call the denoiser once per CFG branch in every step.

A step's rows are the streams' rows side by side (stream i's row r is row ``i * batch + r``),
so the decision, the history and the extrapolation treat a step's calls as one batch: the
rows of one prompt in every stream decide together, and each stream's rows keep their own
history. The first step of a generation learns the streams (every call of it is computed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .plans import CallPlan


@dataclass
class StreamLayout:
    """The denoiser calls of one solver step: one per call stream, in call order."""

    names: list  # stream names in call order; [None] when the pipeline names none
    batch: int  # rows per call

    @property
    def size(self) -> int:
        return len(self.names)

    def offset(self, name: str | None) -> int:
        return self.names.index(name) * self.batch


@dataclass
class StepCalls:
    """The calls of the current step so far: its decision and each stream's input and output."""

    plan: CallPlan | None
    x: dict = field(default_factory=dict)
    out: dict = field(default_factory=dict)
    timestep: Any = None
    arguments: dict | None = None
    tau_host: float | None = None  # the step's noise level on the host (read once, at its first call)

    def next_stream(self, layout: StreamLayout) -> Any:
        """The stream whose call should come next, or a sentinel when none can."""
        if self.plan is None or len(self.out) >= layout.size:
            return _NONE
        return layout.names[len(self.out)]


_NONE = object()
