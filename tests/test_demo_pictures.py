"""Labelled comparison pictures: the numbers are drawn on, outside the image itself."""

import numpy as np
import torch
from PIL import Image

from sadakit.visual import comparison_row, labelled, save_labelled


def _dark_pixels(picture: Image.Image, box: tuple[int, int, int, int]) -> int:
    """Pixels of ``box`` darker than mid-grey (text is black on white)."""
    return int((np.asarray(picture.crop(box).convert("L")) < 128).sum())


def test_labels_surround_the_image_and_are_drawn():
    colour = torch.tensor([0.8, 0.2, 0.6]).view(3, 1, 1)  # not grey: no text pixel has it
    raw = colour.expand(3, 32, 64).clone()  # two rows of 16 px
    picture = labelled(raw, rows=["baseline", "SADA"], columns=["a", "b"],
                       caption=["SADA: 27/50 calls", "PSNR 52.3 dB, 1.84x"])
    array = np.asarray(picture)
    ys, xs = np.nonzero((array == (204, 51, 153)).all(-1))
    top, left, bottom, right = ys.min(), xs.min(), ys.max() + 1, xs.max() + 1
    assert (bottom - top, right - left) == (128, 256)  # x4: each row grew to 64 px (min_row_height)
    assert len(ys) == 128 * 256  # the image itself is untouched
    assert picture.width > 256 and picture.height > 128 and left > 0 and top > 0
    assert _dark_pixels(picture, (0, top, left, bottom)) > 20  # row names
    assert _dark_pixels(picture, (left, 0, right, top)) > 5  # column names
    assert _dark_pixels(picture, (0, bottom, picture.width, picture.height)) > 50  # caption


def test_caption_wider_than_the_image_widens_the_canvas(tmp_path):
    raw = torch.zeros(3, 16, 16)
    caption = ["a caption line much longer than sixteen pixels"]
    path = save_labelled(raw, tmp_path / "p.png", caption=caption, min_row_height=16)
    picture = Image.open(path)
    assert picture.width > 16 * 5 and picture.height > 16
    assert _dark_pixels(picture, (0, 16, picture.width, picture.height)) > 50


def test_comparison_row_is_baseline_accelerated_difference():
    base, fast = torch.zeros(3, 4, 4), torch.full((3, 4, 4), 0.05)
    row = comparison_row(base, fast, gain=8.0)
    assert row.shape == (3, 4, 12)
    assert torch.equal(row[..., :4], base) and torch.equal(row[..., 4:8], fast)
    assert torch.allclose(row[..., 8:], torch.full((3, 4, 4), 0.4))
