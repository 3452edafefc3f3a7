"""Denoisers with several expert modules (Wan 2.2 A14B: ``transformer`` for the high-noise
steps, ``transformer_2`` for the low-noise ones): which module a call reaches, and what an
expert switch does to the generation's history.

Why extrapolation must not span a switch: SADA fills a skipped call from the x0 estimates of
earlier computed calls; across a switch those came from another network, so the next calls
are computed until the new expert has the history the extrapolation order needs (the value
history and the criterion's drift nodes restart). Each expert's token blocks keep their own
residual caches; the other expert's are freed at the switch.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from .state import GenerationState


def component_name(pipe: Any, module: torch.nn.Module, default: str) -> str:
    """The pipeline attribute holding ``module`` (``"transformer_2"``), for names in the report."""
    components = getattr(pipe, "components", None) or {}
    for name, value in components.items():
        if value is module or getattr(value, "_orig_mod", None) is module:
            return name
    return default


class ExpertTracker:
    """The expert the current generation's calls reach, and the switches between them."""

    def __init__(self, names: list[str], blocks_of: list[set[str]], note: Callable[[str], None]) -> None:
        self.names = names  # one per module, the denoiser first
        self.blocks_of = blocks_of  # token-block names of each module
        self.note = note
        self.current: int | None = None

    @property
    def several(self) -> bool:
        return len(self.names) > 1

    def reset(self) -> None:
        self.current = None

    def enter(self, expert: int, state: GenerationState | None, caches: dict[str, torch.Tensor]) -> bool:
        """A call reaches module ``expert``; True when that is a switch within the generation."""
        previous, self.current = self.current, expert
        if previous is None or previous == expert or state is None:
            return False
        state.forget_history()
        for name in self.blocks_of[previous]:
            caches.pop(name, None)
        self.note(f"expert switch from {self.names[previous]} to {self.names[expert]} at call {state.call_index}: "
                  "extrapolation does not span it (the new expert's calls were computed until it had its own "
                  "history)")
        return True
