"""Image fidelity against a baseline output: PSNR and SSIM (torchmetrics), LPIPS when possible."""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger("sadakit")
_lpips_notice_given = False


def _as_batch(images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) float in [0, 1]."""
    if images.dim() == 3:
        images = images.unsqueeze(0)
    return images.detach().to(torch.float32).clamp(0.0, 1.0)


def psnr(test: torch.Tensor, reference: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB over the whole batch; inf for identical images."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    a, b = _as_batch(test), _as_batch(reference)
    if torch.equal(a, b):
        return float("inf")
    return float(peak_signal_noise_ratio(a, b, data_range=1.0))


def ssim(test: torch.Tensor, reference: torch.Tensor) -> float:
    """Structural similarity (mean over the batch), in [-1, 1]; 1 for identical images."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    a, b = _as_batch(test), _as_batch(reference)
    kernel = 11 if min(a.shape[-2:]) >= 11 else (min(a.shape[-2:]) // 2) * 2 - 1
    return float(structural_similarity_index_measure(a, b, data_range=1.0, kernel_size=kernel))


def lpips(test: torch.Tensor, reference: torch.Tensor) -> float | None:
    """LPIPS when its network weights are already on this machine; None (with a notice) otherwise.

    Nothing is downloaded: torchmetrics' LPIPS needs torchvision backbones and LPIPS heads that
    a fresh offline machine does not have.
    """
    try:
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

        metric = LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=True)
    except Exception as err:  # missing torchvision, missing weights, no network
        global _lpips_notice_given
        if not _lpips_notice_given:
            logger.warning("sadakit: LPIPS skipped (its weights are not available offline: %s)", type(err).__name__)
            _lpips_notice_given = True
        return None
    return float(metric(_as_batch(test), _as_batch(reference)))
