"""A compute budget as a plan: which calls of a generation run the network, and how far the
others may extrapolate (docs/frontier.md).

Why a plan and not an interval: past 2x, the fixed late-phase interval keeps the 10-call warm-up
and stretches the quadratic extrapolation over gaps of 5 calls through nodes 1-2 calls apart,
where its x0 error reaches the size of x0 itself (docs/frontier.md, "Why it collapses"). A
budget of K computed calls is spent instead as a short warm-up plus K - warm-up calls spread
evenly over the rest, and every skipped call uses the highest extrapolation order whose nodes
span at least the distance extrapolated. At order 0 the skipped calls hold x0 constant, and an
Euler or DDIM step with constant x0 composes exactly: the generation is then the same solver run
on the computed calls' grid, i.e. "fewer steps" on a subgrid of the full schedule.
"""

from __future__ import annotations

import bisect
import math
from functools import lru_cache


#: the automatic extrapolation limit never exceeds this many calls past the newest computed one
AUTO_GAP_CAP = 3


@lru_cache(maxsize=64)
def computed_calls(expected_calls: int, budget: float, warmup_calls: int, final_calls: int,
                   spread: str = "warmup") -> tuple[int, ...]:
    """The indices of the calls that run the network, sorted.

    ``K = round(budget * expected_calls)`` calls. ``spread="even"``: call ``floor(i * N / K)``
    for ``i < K`` (the final phase, if any, computes its calls on top). ``"warmup"``:
    ``W >= warmup_calls`` in a row at the start,
    the last ``final_calls``, and every ``s``-th call in between, with the smallest interval
    ``s`` for which some ``W`` makes the count exactly K (the closest count below K if none
    does). Why regular: skipped calls then always extrapolate over the same gap through nodes
    that gap apart; mixed gaps of 3 and 4 were measured up to 10 dB worse at the same count
    (docs/frontier.md).
    """
    n = expected_calls
    k = max(1, round(budget * n))
    if k >= n:
        return tuple(range(n))
    if spread == "even":  # K calls as evenly as the integers allow, from the first
        return tuple((i * n) // k for i in range(k))
    final = min(final_calls, k - 1)
    first = min(warmup_calls, k - final)
    if first + final >= k:
        return tuple(range(first)) + tuple(range(n - final, n))

    def plan(w: int, s: int) -> list[int]:
        return list(range(w)) + list(range(w - 1 + s, n - final, s)) + list(range(n - final, n))

    best: list[int] | None = None
    for s in range(2, n):
        for w in range(first, k - final + 1):
            calls = plan(w, s)
            if len(calls) == k:
                return tuple(calls)
            if len(calls) < k and (best is None or len(calls) > len(best)):
                best = calls
    return tuple(best if best is not None else range(n))


def order_for(calls: tuple[int, ...], n: int, max_order: int, max_gap: int | None) -> int:
    """Extrapolation order for skipped call ``n``: 0 when ``n`` is more than ``max_gap`` calls
    past the newest computed one, else the highest ``p <= max_order`` whose ``p + 1`` newest
    computed calls span at least that distance (never an extrapolation beyond the nodes' own
    span, where Lagrange polynomials blow up), else 0.

    ``max_gap`` None: half the spacing of the two newest computed calls, rounded up, and at most
    3 (the first half of the interval to the next computed call extrapolates, the second holds
    x0). Measured on both bundled models (docs/frontier.md): with computed calls s apart, a limit
    of 3 instead of 2 loses 3-8 dB at s = 4 and gains 3-8 dB at s = 5 and 6; at s = 8 a limit
    of 4 gains 3 dB on notes and loses 4 dB (and adherence) on shapes."""
    i = bisect.bisect_left(calls, n) - 1  # newest computed call before n
    if i < 0:
        return 0
    gap = n - calls[i]
    if max_gap is None:
        max_gap = min(math.ceil((calls[i] - calls[i - 1]) / 2), AUTO_GAP_CAP) if i >= 1 else 0
    if gap > max_gap:
        return 0
    for p in range(max_order, 0, -1):
        if i - p >= 0 and calls[i] - calls[i - p] >= gap:
            return p
    return 0
