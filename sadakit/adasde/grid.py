"""A learnable, always-valid sigma grid: softmax increments of log-sigma between fixed ends.

Why this parameterisation: at a handful of steps the placement of the nodes matters as much as
the solver (measured in docs/adasde.md), so distillation learns it. Any real vector of
``steps`` logits maps to a grid that starts exactly at ``sigma_max``, ends exactly at
``sigma_min`` and is strictly decreasing (each step takes a softmax share of the total
log-sigma drop, and every share is positive), so gradient steps can never produce a grid a
coefficient file would refuse. Equal logits give the log-linear grid.

``grid_with_ends`` learns the ends too: a top and a bottom inside the model's sigma range (two
sigmoid logits), the interior as above between them, then one last step to sigma 0 as diffusers'
Euler ends. Any end logits within ``MAX_END_LOGIT`` give a valid grid.
"""

from __future__ import annotations

import math

import torch

#: Logits are kept in this range (files refuse others): beyond it a step's share of the log-sigma
#: drop is below e^-100 of another's, i.e. a node duplicated to float precision.
MAX_GRID_LOGIT = 50.0


def grid_from_logits(logits: torch.Tensor, sigma_max: float, sigma_min: float) -> torch.Tensor:
    """The grid ``(steps + 1,)`` of ``logits`` ``(steps,)``: differentiable, in ``logits``' dtype and device.

    ``log sigma_k = log sigma_max - (log sigma_max - log sigma_min) * sum_{j<k} softmax(logits)_j``;
    both ends are set exactly (no rounding drift), so ``grid[0] == sigma_max`` and
    ``grid[-1] == sigma_min``.
    """
    if logits.ndim != 1 or logits.numel() < 1:
        raise ValueError(f"grid logits must be a non-empty vector; got shape {tuple(logits.shape)}")
    if not 0.0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max; got sigma_min={sigma_min}, sigma_max={sigma_max}")
    share = torch.softmax(logits, dim=0)
    drop = math.log(sigma_max) - math.log(sigma_min)
    inner = math.log(sigma_max) - drop * torch.cumsum(share, dim=0)[:-1]
    ends = logits.new_tensor([math.log(sigma_max)]), logits.new_tensor([math.log(sigma_min)])
    grid = torch.exp(torch.cat([ends[0], inner, ends[1]]))
    # exp(log(s)) can differ from s in the last bit: the ends are the metadata's numbers exactly
    return torch.cat([logits.new_tensor([sigma_max]), grid[1:-1], logits.new_tensor([sigma_min])])


def logits_for_grid(sigmas: torch.Tensor) -> torch.Tensor:
    """Logits ``(steps,)`` whose grid is ``sigmas`` (a strictly decreasing positive grid), float64.

    The inverse of :func:`grid_from_logits` up to a constant (softmax ignores one); used to
    start learning from a Karras or log-linear grid.
    """
    s = sigmas.detach().to(torch.float64).cpu()
    if s.ndim != 1 or len(s) < 2 or not bool((s > 0).all()) or not bool((s[:-1] > s[1:]).all()):
        raise ValueError("the grid must be a strictly decreasing vector of at least two positive sigmas")
    drops = torch.log(s[:-1]) - torch.log(s[1:])
    logits = torch.log(drops / drops.sum())
    return logits - logits.mean()


# --------------------------------------------------------------------------------------
# Learned ends: a free top, a free bottom, then one last step to sigma 0
# --------------------------------------------------------------------------------------

#: End logits are kept in this range (files refuse others, distillation clamps to it): with
#: sigmoid(10) = 1 - 4.5e-5 the bottom stays at least 2e-9 of the range's log width below the top,
#: distinct in float64 whatever the logits, and an end can come as close to the range's edge.
MAX_END_LOGIT = 10.0

#: Smallest share of the top-to-bottom log-sigma drop one interior step takes. Why: with the ends
#: close together (a top logit near -MAX_END_LOGIT leaves a drop of ~1e-8 in log sigma) a softmax
#: share of ~1e-12 falls below float64's resolution of log sigma and duplicates a node; at 1e-6
#: every step stays at least ~30 ulps wide. Equal logits still give the log-linear grid.
MIN_END_GRID_SHARE = 1e-6


def ends_from_logits(end_logits: torch.Tensor, sigma_lo: float, sigma_hi: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(top, bottom)`` of ``end_logits = (top_logit, bottom_logit)``: differentiable, always valid.

    ``log top = log lo + (log hi - log lo) sigmoid(top_logit)`` keeps the top inside the model's
    range ``[sigma_lo, sigma_hi]``; ``log bottom = log lo + (log top - log lo) sigmoid(bottom_logit)``
    keeps the bottom at or above ``sigma_lo`` (where the model can still be told its noise
    level) and strictly below the top.
    """
    if end_logits.shape != (2,):
        raise ValueError(f"end logits must be (top_logit, bottom_logit); got shape {tuple(end_logits.shape)}")
    if not 0.0 < sigma_lo < sigma_hi:
        raise ValueError(f"need 0 < sigma_lo < sigma_hi; got sigma_lo={sigma_lo}, sigma_hi={sigma_hi}")
    lo, hi = math.log(sigma_lo), math.log(sigma_hi)
    log_top = lo + (hi - lo) * torch.sigmoid(end_logits[0])
    log_bottom = lo + (log_top - lo) * torch.sigmoid(end_logits[1])
    return torch.exp(log_top), torch.exp(log_bottom)


def grid_with_ends(logits: torch.Tensor, end_logits: torch.Tensor, sigma_lo: float, sigma_hi: float) -> torch.Tensor:
    """The grid ``(steps + 1,)``: top, the interior, bottom, then exactly 0 (the last step denoises fully).

    ``logits`` ``(steps - 1,)`` are the interior's softmax shares of the log-sigma drop from
    the top to the bottom (as :func:`grid_from_logits`, each at least :data:`MIN_END_GRID_SHARE`), ``end_logits`` place the ends
    (:func:`ends_from_logits`). Differentiable in both; every value of them gives a valid grid:
    top within the model's range, bottom > 0, strictly decreasing, last node 0 (diffusers'
    Euler ends the same way: its last call's denoised estimate is the sample).
    """
    if logits.ndim != 1 or logits.numel() < 1:
        raise ValueError(f"interior grid logits must be a non-empty vector; got shape {tuple(logits.shape)}")
    top, bottom = ends_from_logits(end_logits.to(logits.dtype), sigma_lo, sigma_hi)
    n = logits.numel()
    share = torch.softmax(logits, dim=0) * (1.0 - n * MIN_END_GRID_SHARE) + MIN_END_GRID_SHARE
    log_top, log_bottom = torch.log(top), torch.log(bottom)
    inner = torch.exp(log_top - (log_top - log_bottom) * torch.cumsum(share, dim=0)[:-1])
    return torch.cat([top.reshape(1), inner, bottom.reshape(1), logits.new_zeros(1)])


def end_logits_for(top: float, bottom: float, sigma_lo: float, sigma_hi: float) -> torch.Tensor:
    """The end logits (float64) placing ``top`` and ``bottom``: the inverse of :func:`ends_from_logits`.

    Ends on (or beyond) the range's edges are pulled inside it, to a logit of +-``MAX_END_LOGIT``.
    """
    if not 0.0 < bottom < top:
        raise ValueError(f"need 0 < bottom < top; got bottom={bottom}, top={top}")
    lo, hi = math.log(sigma_lo), math.log(sigma_hi)
    edge = MAX_END_LOGIT
    clip = lambda u: min(max(u, 1.0 / (1.0 + math.exp(edge))), 1.0 / (1.0 + math.exp(-edge)))  # noqa: E731
    u_top = clip((math.log(top) - lo) / (hi - lo))
    log_top = lo + (hi - lo) * u_top
    u_bottom = clip((math.log(bottom) - lo) / (log_top - lo))
    logit = lambda u: math.log(u / (1.0 - u))  # noqa: E731
    return torch.tensor([logit(u_top), logit(u_bottom)], dtype=torch.float64)
