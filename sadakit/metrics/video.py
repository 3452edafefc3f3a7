"""Video fidelity against a baseline output: per-frame PSNR / SSIM, and temporal consistency.

Per-frame measures miss flicker: two clips can match frame by frame to within a few dB and
still move differently. The temporal measure compares the frame-to-frame changes of the two
clips (PSNR of ``x[t+1] - x[t]`` against ``y[t+1] - y[t]``, over a data range of 2), which
drops when an accelerated clip jitters or freezes where the baseline moves.
"""

from __future__ import annotations

import torch

from .image import psnr, ssim


def _frames(video: torch.Tensor) -> torch.Tensor:
    """(B, F, C, H, W) or (F, C, H, W) floats in [0, 1] -> (B, F, C, H, W)."""
    if video.dim() == 4:
        video = video.unsqueeze(0)
    if video.dim() != 5:
        raise ValueError(f"expected a video of shape (B, F, C, H, W), got {tuple(video.shape)}")
    return video.detach().to(torch.float32).clamp(0.0, 1.0)


def temporal_psnr(test: torch.Tensor, reference: torch.Tensor) -> float:
    """PSNR (dB) of the test clip's frame-to-frame differences against the reference's."""
    a, b = _frames(test), _frames(reference)
    if a.shape[1] < 2:
        return float("nan")
    da, db = a[:, 1:] - a[:, :-1], b[:, 1:] - b[:, :-1]
    mse = torch.mean((da - db) ** 2).item()
    if mse == 0.0:
        return float("inf")
    return float(10.0 * torch.log10(torch.tensor(4.0 / mse)))  # data range of a difference: 2


def video_fidelity(test: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """``psnr_db`` / ``ssim`` over every frame, and ``temporal_psnr_db``."""
    a, b = _frames(test), _frames(reference)
    flat_a, flat_b = a.flatten(0, 1), b.flatten(0, 1)
    return {"psnr_db": psnr(flat_a, flat_b), "ssim": ssim(flat_a, flat_b), "temporal_psnr_db": temporal_psnr(a, b)}
