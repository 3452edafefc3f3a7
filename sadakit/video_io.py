"""Writing generated videos: MP4 through diffusers' ``export_to_video`` (imageio + the ffmpeg
that ``imageio-ffmpeg`` ships), an animated GIF through Pillow when no encoder is installed."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np


def mp4_available() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("imageio", "imageio_ffmpeg"))


def write_video(frames: Any, path: str | Path, fps: int) -> tuple[Path, str | None]:
    """Write one clip's frames ((F, H, W, 3) floats in [0, 1], or PIL images) to ``path``.

    ``.mp4`` needs ``pip install 'sadakit[video]'``; without it the clip is written as a GIF
    beside the requested path, and the second value says so.
    """
    path = Path(path)
    if fps < 1:
        raise ValueError(f"fps must be at least 1, got {fps}")
    images = _as_pil(frames)
    path.parent.mkdir(parents=True, exist_ok=True)
    note = None
    if path.suffix.lower() == ".mp4" and not mp4_available():
        path, note = path.with_suffix(".gif"), "no MP4 encoder (pip install 'sadakit[video]'): wrote a GIF instead"
    if path.suffix.lower() == ".mp4":
        from diffusers.utils import export_to_video

        export_to_video([np.asarray(im) for im in images], str(path), fps=fps, macro_block_size=1)
    elif path.suffix.lower() == ".gif":
        images[0].save(path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    else:
        raise ValueError(f"{path}: a video is written as .mp4 or .gif")
    return path, note


def _as_pil(frames: Any) -> list:
    from PIL import Image

    if isinstance(frames, (list, tuple)) and frames and isinstance(frames[0], Image.Image):
        return list(frames)
    array = np.asarray(frames, dtype=np.float32)
    if array.ndim != 4 or array.shape[-1] not in (1, 3):
        raise ValueError(f"expected frames of shape (F, H, W, 3), got {array.shape}")
    data = (np.clip(array, 0.0, 1.0) * 255).round().astype(np.uint8)
    return [Image.fromarray(frame.squeeze(-1) if frame.shape[-1] == 1 else frame) for frame in data]
