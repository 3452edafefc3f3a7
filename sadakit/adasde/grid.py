"""A learnable, always-valid sigma grid: softmax increments of log-sigma between fixed ends.

Why this parameterisation: at a handful of steps the placement of the nodes matters as much as
the solver (measured in docs/adasde.md), so distillation learns it. Any real vector of
``steps`` logits maps to a grid that starts exactly at ``sigma_max``, ends exactly at
``sigma_min`` and is strictly decreasing (each step takes a softmax share of the total
log-sigma drop, and every share is positive), so gradient steps can never produce a grid a
coefficient file would refuse. Equal logits give the log-linear grid.
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
