"""Token selection for partial denoiser calls: which tokens a block must recompute.

A per-token stability map (``m`` averaged over channels) lives on the latent's token grid,
with any number of axes (height x width, frames x height x width, time x frequency). Each
eligible block sees tokens on its own grid (UNet blocks downsample; non-square grids are the
rule for spectrograms), so the map is adaptively pooled to the block's resolution. A token is
recomputed when it is unstable (``m >= 0``) or is its window's anchor; anchors rotate with the
call index so that every region is refreshed regularly even when it looks stable.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


Grid = tuple[int, ...]


def grid_for_tokens(latent_grid: Grid, n_tokens: int, max_levels: int = 6) -> Grid | None:
    """The grid of ``n_tokens`` tokens obtained by halving every axis of ``latent_grid`` k times.

    Any number of axes (height x width, frames x height x width, time). Matches UNet
    downsampling with padding (ceil); ``max_levels=0`` asks for the grid itself (DiT blocks).
    Returns None if no level matches.
    """
    grid = tuple(int(a) for a in latent_grid)
    for _ in range(max_levels + 1):
        if math.prod(grid) == n_tokens:
            return grid
        grid = tuple(math.ceil(a / 2) for a in grid)
    return None


def pool_scores(score_grid: torch.Tensor, out_grid: Grid) -> torch.Tensor:
    """(B, *grid) -> (B, prod(out_grid)): mean of the stability map over each token's footprint."""
    dims = len(out_grid)
    if tuple(score_grid.shape[1:]) == tuple(out_grid):
        pooled = score_grid
    elif dims in _ADAPTIVE_POOL:
        pooled = _ADAPTIVE_POOL[dims](score_grid.unsqueeze(1), tuple(out_grid)).squeeze(1)
    else:
        raise ValueError(f"token grids of {dims} axes cannot be pooled (1 to 3 axes are supported)")
    return pooled.reshape(pooled.shape[0], -1)


_ADAPTIVE_POOL = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}


def anchor_mask(grid: Grid, window: int, phase: int, device: torch.device) -> torch.Tensor:
    """(prod(grid),) bool: one anchor per ``window x window`` cell of the last two axes (the last
    axis alone for 1-D grids), its position cycling with ``phase``; leading axes (frames) each
    get their own anchors, so every frame is refreshed."""
    grid = tuple(grid)
    if window <= 1:
        return torch.ones(math.prod(grid), dtype=torch.bool, device=device)
    spatial = grid[-2:] if len(grid) >= 2 else grid
    offset = phase % (window ** len(spatial))
    mask = torch.ones((), dtype=torch.bool, device=device)
    for axis, size in enumerate(spatial):
        position = (offset // window ** (len(spatial) - 1 - axis)) % window
        along = (torch.arange(size, device=device) % window) == position
        mask = mask.unsqueeze(-1) & along
    leading = math.prod(grid[: len(grid) - len(spatial)])
    return mask.reshape(1, -1).expand(leading, -1).reshape(-1)


def required_mask(pooled_scores: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """(B, N) bool: unstable tokens (score >= 0) plus anchors."""
    return (pooled_scores >= 0) | anchors.unsqueeze(0)


def select_indices(pooled_scores: torch.Tensor, required: torch.Tensor, k: int) -> torch.Tensor:
    """(B, k) sorted token indices per row: every required token, then the least stable others.

    All rows get the same ``k`` (the largest required count) so the block runs batched.
    """
    key = torch.where(required, torch.full_like(pooled_scores, float("inf")), pooled_scores)
    idx = torch.topk(key, k, dim=1).indices
    return torch.sort(idx, dim=1).values
