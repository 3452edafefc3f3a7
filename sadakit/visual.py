"""Write images and side-by-side comparison pictures (baseline | accelerated | difference),
plain or with their labels drawn on."""

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
    return save_image(comparison_row(baseline, accelerated, gain), path)


def labelled(
    image: torch.Tensor | Image.Image,
    rows: list[str] | None = None,
    columns: list[str] | None = None,
    caption: list[str] | None = None,
    min_row_height: int = 64,
) -> Image.Image:
    """``image`` with its row names on the left, column names on top and ``caption`` lines
    below, drawn with PIL's default font, so the picture explains itself without the README.

    Rows and columns split the image evenly. Small images are enlarged by a whole factor
    (nearest neighbour, pixels stay sharp) until a row is ``min_row_height`` pixels high,
    so 32-pixel samples are visible next to the text.
    """
    from PIL import ImageDraw

    picture = to_pil(image) if isinstance(image, torch.Tensor) else image.convert("RGB")
    n_rows = max(len(rows or []), 1)
    scale = max(1, -(-min_row_height * n_rows // picture.height))  # ceil
    picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    font = _font()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def size(text: str) -> tuple[int, int]:
        left, top, right, bottom = measure.textbbox((0, 0), text, font=font)
        return right - left, bottom - top

    pad, line = 6, max(size("Ag|")[1], 8) + 4
    left = (max(size(r)[0] for r in rows) + 2 * pad) if rows else 0
    top = line + pad if columns else 0
    caption = caption or []
    bottom = len(caption) * line + (2 * pad if caption else 0)
    width = max(left + picture.width, max((size(c)[0] for c in caption), default=0) + 2 * pad)
    canvas = Image.new("RGB", (width, top + picture.height + bottom), "white")
    canvas.paste(picture, (left, top))
    draw = ImageDraw.Draw(canvas)
    for i, name in enumerate(rows or []):
        centre = top + (i + 0.5) * picture.height / len(rows)
        draw.text((pad, centre - size(name)[1] / 2), name, fill="black", font=font)
    for j, name in enumerate(columns or []):
        centre = left + (j + 0.5) * picture.width / len(columns)
        draw.text((centre - size(name)[0] / 2, pad // 2), name, fill="black", font=font)
    for k, text in enumerate(caption):
        draw.text((pad, top + picture.height + pad + k * line), text, fill="black", font=font)
    return canvas


def _font(size: int = 12):
    """PIL's default font, at ``size`` where this Pillow can scale it (>= 10.1 with FreeType)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()


def save_labelled(image: torch.Tensor | Image.Image, path: Path, **labels) -> Path:
    """:func:`labelled` written to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    labelled(image, **labels).save(path)
    return path


def comparison_row(baseline: torch.Tensor, accelerated: torch.Tensor, gain: float = 8.0) -> torch.Tensor:
    """The picture :func:`save_comparison` writes, as a tensor (for :func:`labelled`)."""
    diff = ((accelerated - baseline).abs() * gain).clamp(0, 1)
    return torch.cat([baseline.clamp(0, 1), accelerated.clamp(0, 1), diff], dim=-1)
