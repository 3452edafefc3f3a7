"""Token selection for partial denoiser calls: which tokens a block must recompute.

A per-token stability map (``m`` averaged over channels) lives on the latent grid. Each
eligible block sees tokens on its own grid (UNet blocks downsample; non-square grids are the
rule for spectrograms), so the map is adaptively pooled to the block's resolution. A token is
recomputed when it is unstable (``m >= 0``) or is its window's anchor; anchors rotate with the
call index so that every region is refreshed regularly even when it looks stable.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def grid_for_tokens(latent_hw: tuple[int, int], n_tokens: int, max_levels: int = 6) -> tuple[int, int] | None:
    """The (h, w) grid of ``n_tokens`` tokens obtained by halving the latent grid k times.

    Matches UNet downsampling with padding (ceil). Returns None if no level matches.
    """
    h, w = latent_hw
    for _ in range(max_levels + 1):
        if h * w == n_tokens:
            return h, w
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    return None


def pool_scores(score_grid: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
    """(B, H, W) -> (B, h*w): mean of the stability map over each block token's footprint."""
    if tuple(score_grid.shape[-2:]) == tuple(out_hw):
        pooled = score_grid
    else:
        pooled = F.adaptive_avg_pool2d(score_grid.unsqueeze(1), out_hw).squeeze(1)
    return pooled.reshape(pooled.shape[0], -1)


def anchor_mask(hw: tuple[int, int], window: int, phase: int, device: torch.device) -> torch.Tensor:
    """(h*w,) bool: one anchor per ``window x window`` cell, its position cycling with ``phase``."""
    h, w = hw
    if window <= 1:
        return torch.ones(h * w, dtype=torch.bool, device=device)
    offset = phase % (window * window)
    dy, dx = divmod(offset, window)
    ys = torch.arange(h, device=device)
    xs = torch.arange(w, device=device)
    mask = ((ys % window) == dy)[:, None] & ((xs % window) == dx)[None, :]
    return mask.reshape(-1)


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
