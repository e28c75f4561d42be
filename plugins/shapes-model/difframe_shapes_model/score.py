"""Automatic scoring of a generated image against its prompt: background colour, shape colour, shape kind.

- background: the palette colour nearest to most pixels of the outer border;
- shape colour: the palette colour nearest to most pixels that differ clearly from the background;
- shape kind: the ideal circle, square or triangle fitted to those pixels' bounding box that overlaps them best.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from .data import PALETTE, SHAPES

_NAMES = list(PALETTE)
_COLOURS = np.array([PALETTE[name] for name in _NAMES], dtype=np.float32)
BORDER = 3
DIFFERENT = 90.0  # RGB distance from the background beyond which a pixel belongs to the shape


@dataclass(frozen=True)
class Reading:
    background: str
    colour: str | None
    shape: str | None


def _nearest(pixels: np.ndarray) -> np.ndarray:
    return np.linalg.norm(pixels[:, None, :] - _COLOURS[None], axis=-1).argmin(axis=1)


def _majority(pixels: np.ndarray) -> str:
    return _NAMES[np.bincount(_nearest(pixels), minlength=len(_NAMES)).argmax()]


def _templates(height: int, width: int) -> dict[str, np.ndarray]:
    y, x = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
    cy, cx = height / 2, width / 2
    circle = ((y - cy) / (height / 2)) ** 2 + ((x - cx) / (width / 2)) ** 2 <= 1
    square = np.ones((height, width), dtype=bool)
    triangle = np.abs(x - cx) <= (y / height) * (width / 2)
    return {"circle": circle, "square": square, "triangle": triangle}


def read(image: Image.Image | np.ndarray) -> Reading:
    pixels = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float32)
    border = np.concatenate(
        [
            pixels[:BORDER].reshape(-1, 3),
            pixels[-BORDER:].reshape(-1, 3),
            pixels[:, :BORDER].reshape(-1, 3),
            pixels[:, -BORDER:].reshape(-1, 3),
        ]
    )
    background = _majority(border)
    reference = np.median(border, axis=0)
    mask = np.linalg.norm(pixels - reference, axis=-1) > DIFFERENT
    if mask.sum() < 12:
        return Reading(background, None, None)
    colour = _majority(pixels[mask])
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    crop = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    ious = {
        name: (crop & template).sum() / max((crop | template).sum(), 1)
        for name, template in _templates(*crop.shape).items()
    }
    return Reading(background, colour, max(SHAPES, key=lambda name: ious[name]))


def parse_prompt(prompt: str) -> tuple[str, str, str]:
    """'a red circle on a blue background' -> ('red', 'circle', 'blue')."""
    words = prompt.lower().split()
    return words[1], words[2], words[5]


def score(image: Image.Image | np.ndarray, prompt: str) -> dict[str, bool]:
    colour, shape, background = parse_prompt(prompt)
    reading = read(image)
    result = {
        "background": reading.background == background,
        "colour": reading.colour == colour,
        "shape": reading.shape == shape,
    }
    result["both_colours"] = result["background"] and result["colour"]
    return result
