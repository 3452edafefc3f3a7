"""What a network's first full call of an input shape teaches sadakit, kept across sessions.

That call runs eagerly under torch's flop counter to learn the network's FLOPs and each token
block's token count at that shape (about 2.5x a plain call on the bundled shapes UNet). Both
are properties of the architecture and the shape, not of a SADAConfig, and every
``accelerate`` starts a new session: without this, the bench (which accelerates before every
timed run), ``sadakit tune`` (once per candidate) and a user toggling acceleration paid that
call again each time. Kept per set of denoiser modules for as long as they live.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from weakref import WeakKeyDictionary

import torch


@dataclass
class Learned:
    #: (expert, *input shape) -> (FLOPs of a full call, FLOPs per token block)
    flops: dict[tuple, tuple[float, dict[str, float]]] = field(default_factory=dict)
    #: (expert, *input shape without the batch) -> token block name -> tokens it saw on a full call
    tokens: dict[tuple, dict[str, int]] = field(default_factory=dict)


_LEARNED: "WeakKeyDictionary[torch.nn.Module, dict[tuple, Learned]]" = WeakKeyDictionary()


def learned_about(modules: list[torch.nn.Module], family: str, block_names: list[str]) -> Learned:
    """The shared record for these denoiser modules (the first one keys it, the rest by identity)
    as hooked by this family with these token blocks."""
    key = (family, tuple(id(m) for m in modules[1:]), tuple(sorted(block_names)))
    return _LEARNED.setdefault(modules[0], {}).setdefault(key, Learned())
