"""Write images and side-by-side comparison pictures (baseline | accelerated | difference)."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image


def to_pil(image: torch.Tensor) -> Image.Image:
    """(C, H, W) float in [0, 1] -> PIL RGB."""
    array = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array)


def save_image(image: torch.Tensor, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    to_pil(image).save(path)
    return path


def save_comparison(baseline: torch.Tensor, accelerated: torch.Tensor, path: Path, gain: float = 8.0) -> Path:
    """Baseline, accelerated and their absolute difference amplified ``gain`` times, side by side."""
    diff = ((accelerated - baseline).abs() * gain).clamp(0, 1)
    row = torch.cat([baseline.clamp(0, 1), accelerated.clamp(0, 1), diff], dim=-1)
    return save_image(row, path)
