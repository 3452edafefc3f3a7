"""Samplers whose trajectories SADA cannot judge.

Consistency samplers (LCM, TCD) predict a clean sample at every step and re-noise it to the
next level: consecutive states are not points of one ODE solution, so neither the stability
criterion nor an extrapolation through earlier x0 predictions means anything, and at their
usual 2-8 steps every call is in the warm-up anyway. SADA computes every call with them and
says why, instead of silently doing nothing.
"""

from __future__ import annotations

from typing import Any

CONSISTENCY_SAMPLERS = ("LCMScheduler", "TCDScheduler")


def unjudgeable_sampler(scheduler: Any) -> str | None:
    """Why SADA cannot act with this scheduler, or None when it can."""
    name = type(scheduler).__name__
    if name in CONSISTENCY_SAMPLERS:
        return (f"{name} is a consistency sampler (it re-noises a fresh x0 prediction at every step), so SADA's "
                "stability criterion and extrapolation do not apply: every call is computed")
    return None
