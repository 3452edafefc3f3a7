"""The notes model's picture: log-mel spectrograms of clips, rows on one colour scale."""

from __future__ import annotations

import torch

from .model import log_mel


def spectrogram_picture(rows: list[torch.Tensor]) -> torch.Tensor:
    """``(3, H, W)`` image in [0, 1]: one row of log-mel spectrograms (low pitch at the
    bottom, time to the right) per tensor of clips, clips side by side, 1 px separators;
    the same colour scale for all rows, so baseline and SADA compare directly."""
    mels = [log_mel(r).transpose(-1, -2).flip(-2) for r in rows]  # (n, mels, frames)
    values = torch.cat([m.flatten() for m in mels])
    lo, hi = float(values.quantile(0.3)), float(values.max())  # contrast: the quietest 30% is black
    lines = []
    for m in mels:
        img = ((m - lo) / (hi - lo)).clamp(0, 1)
        sep = torch.ones(img.shape[0], img.shape[1], 1)
        lines.append(torch.cat([torch.cat([c, s], dim=-1) for c, s in zip(img, sep)], dim=-1))
        lines.append(torch.ones(1, lines[-1].shape[-1]))
    gray = torch.cat(lines, dim=0)
    return torch.stack([gray, gray ** 0.7, gray ** 0.4])
