"""Procedural "shapes" dataset: one coloured shape on a light background, with its prompt.

Why procedural: no data set can be downloaded here, and a generator whose every image is
fully described by its prompt lets an independent classifier check whether a text-to-image
model followed the prompt (shape, colour and position are each one of a few classes).

Every image is drawn from a signed distance with a soft (about one pixel) edge, so the
data has no aliasing the VAE would have to learn, and sizes and positions are jittered
so the model cannot memorise 48 fixed pictures.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow")
POSITIONS: tuple[str, ...] = ("top left", "top right", "bottom left", "bottom right")

#: RGB in [0, 1] of each colour name (strongly separated hues, so colour is unambiguous).
COLOUR_RGB: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.12, 0.12),
    "green": (0.12, 0.65, 0.20),
    "blue": (0.15, 0.25, 0.85),
    "yellow": (0.95, 0.82, 0.10),
}
BACKGROUND_RGB: tuple[float, float, float] = (0.94, 0.94, 0.92)

IMAGE_SIZE = 32


@dataclass(frozen=True)
class ShapeLabel:
    """What one image shows; indices into :data:`SHAPES`, :data:`COLOURS`, :data:`POSITIONS`."""

    shape: int
    colour: int
    position: int

    @property
    def prompt(self) -> str:
        return prompt_for(self.shape, self.colour, self.position)


def prompt_for(shape: int, colour: int, position: int) -> str:
    """The caption of an image, e.g. ``"a red circle in the top left"``."""
    return f"a {COLOURS[colour]} {SHAPES[shape]} in the {POSITIONS[position]}"


def all_labels() -> list[ShapeLabel]:
    """All 48 (shape, colour, position) combinations, in a fixed order."""
    return [
        ShapeLabel(s, c, p)
        for s, c, p in itertools.product(range(len(SHAPES)), range(len(COLOURS)), range(len(POSITIONS)))
    ]


def parse_prompt(prompt: str) -> ShapeLabel:
    """Inverse of :func:`prompt_for` (raises ``ValueError`` for any other text)."""
    for label in all_labels():
        if label.prompt == prompt.strip():
            return label
    raise ValueError(f"not a shapes prompt: {prompt!r} (expected e.g. {prompt_for(0, 0, 0)!r})")


def random_labels(n: int, generator: torch.Generator) -> torch.Tensor:
    """``(n, 3)`` int64 tensor of uniformly drawn (shape, colour, position) indices."""
    return torch.stack(
        [
            torch.randint(len(SHAPES), (n,), generator=generator),
            torch.randint(len(COLOURS), (n,), generator=generator),
            torch.randint(len(POSITIONS), (n,), generator=generator),
        ],
        dim=1,
    )


def render(labels: torch.Tensor, generator: torch.Generator, size: int = IMAGE_SIZE) -> torch.Tensor:
    """Draw one image per label row: ``(n, 3, size, size)`` float in [0, 1].

    Size (radius 17-23% of the side), centre (+-6% around the quadrant centre) and colour
    (+-0.05 per channel) are jittered with ``generator``, so the same generator state gives
    the same images.
    """
    n = labels.shape[0]
    shape, colour, position = labels[:, 0], labels[:, 1], labels[:, 2]
    u = lambda *s: torch.rand(*s, generator=generator)  # noqa: E731 - local shorthand
    radius = (0.17 + 0.06 * u(n)) * size
    col = (position % 2).float()
    row = (position // 2).float()
    cx = (0.25 + 0.5 * col + 0.12 * (u(n) - 0.5)) * size
    cy = (0.25 + 0.5 * row + 0.12 * (u(n) - 0.5)) * size

    palette = torch.tensor([COLOUR_RGB[c] for c in COLOURS])
    fg = (palette[colour] + 0.05 * (2 * u(n, 3) - 1)).clamp(0, 1)
    return draw(shape, fg, cx, cy, radius, size)


def draw(shape: torch.Tensor, fg: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor, radius: torch.Tensor,
         size: int = IMAGE_SIZE) -> torch.Tensor:
    """``(n, 3, size, size)`` images of shape ``shape[i]`` (index into :data:`SHAPES`) in RGB
    ``fg[i]`` centred at pixel ``(cx[i], cy[i])`` with radius ``radius[i]`` on the background.
    Shared with :mod:`sadakit.bundled.data_moving_shapes`, whose shapes move between frames."""
    n = shape.shape[0]
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    y = coords.view(1, size, 1)
    x = coords.view(1, 1, size)
    dx = x - cx.view(n, 1, 1)
    dy = y - cy.view(n, 1, 1)
    r = radius.view(n, 1, 1)

    # Signed distances (negative inside) of each shape, all computed, then selected.
    d_circle = torch.sqrt(dx**2 + dy**2) - r
    d_square = torch.maximum(dx.abs(), dy.abs()) - 0.85 * r
    # Upward equilateral triangle with circumradius r (inradius r/2): the largest of the
    # three edge distances, outward normals in image coordinates (y grows downwards).
    normals = ((0.0, 1.0), (-0.8660254, -0.5), (0.8660254, -0.5))
    # Circumradius 1.2 r gives about the circle's visual weight; shifting it down by a
    # quarter of that centres its bounding box like the other shapes.
    rt = 1.2 * r
    dyt = dy - 0.25 * rt
    d_triangle = torch.stack([dx * nx + dyt * ny for nx, ny in normals]).amax(dim=0) - 0.5 * rt
    d = torch.where(
        (shape == 0).view(n, 1, 1), d_circle, torch.where((shape == 1).view(n, 1, 1), d_square, d_triangle)
    )
    alpha = torch.clamp(0.5 - d, 0.0, 1.0).unsqueeze(1)  # ~1 px soft edge

    fg = fg.view(n, 3, 1, 1)
    bg = torch.tensor(BACKGROUND_RGB).view(1, 3, 1, 1)
    return alpha * fg + (1 - alpha) * bg


def sample_batch(n: int, generator: torch.Generator, size: int = IMAGE_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random labels and their images (``(n, 3)`` int64, ``(n, 3, size, size)`` in [0, 1])."""
    labels = random_labels(n, generator)
    return labels, render(labels, generator, size)


def prompts_of(labels: torch.Tensor) -> list[str]:
    """The prompt of every label row."""
    return [prompt_for(int(s), int(c), int(p)) for s, c, p in labels.tolist()]


def conditioning_prompts() -> list[str]:
    """The prompts a text-to-image model trains on: index 0 is the empty prompt (classifier-free
    guidance's unconditional branch), then every label's prompt in :func:`all_labels` order."""
    return [""] + [label.prompt for label in all_labels()]


def conditioning_index(labels: torch.Tensor) -> torch.Tensor:
    """Each ``(shape, colour, position)`` row's index in :func:`conditioning_prompts`."""
    index_of = {(l.shape, l.colour, l.position): i + 1 for i, l in enumerate(all_labels())}
    return torch.tensor([index_of[tuple(row)] for row in labels.tolist()])
