"""The training data: one flat shape of one colour on a plain background of another, drawn with Pillow.

Captions read "a {colour} {shape} on a {background} background". Everything derives from a seed, so a data set
is reproducible from (seed, count) alone.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 220, 40),
    "white": (245, 245, 245),
    "purple": (150, 60, 190),
}
SHAPES = ("circle", "square", "triangle")
SIZE = 64
SUPERSAMPLE = 4  # drawn 4x larger, then downscaled: smooth edges like a photograph's


@dataclass(frozen=True)
class Scene:
    colour: str
    shape: str
    background: str
    box: tuple[int, int, int, int]  # left, top, right, bottom in pixels of the final image

    @property
    def caption(self) -> str:
        return f"a {self.colour} {self.shape} on a {self.background} background"


def random_scene(rng: random.Random, size: int = SIZE) -> Scene:
    colour, background = rng.sample(list(PALETTE), 2)
    extent = rng.randint(size * 5 // 16, size * 11 // 16)
    left, top = rng.randint(2, size - extent - 2), rng.randint(2, size - extent - 2)
    return Scene(colour, rng.choice(SHAPES), background, (left, top, left + extent, top + extent))


def draw(scene: Scene, size: int = SIZE) -> Image.Image:
    big = Image.new("RGB", (size * SUPERSAMPLE, size * SUPERSAMPLE), PALETTE[scene.background])
    pen = ImageDraw.Draw(big)
    left, top, right, bottom = (v * SUPERSAMPLE for v in scene.box)
    fill = PALETTE[scene.colour]
    if scene.shape == "circle":
        pen.ellipse((left, top, right - 1, bottom - 1), fill=fill)
    elif scene.shape == "square":
        pen.rectangle((left, top, right - 1, bottom - 1), fill=fill)
    else:
        pen.polygon([((left + right) / 2, top), (right - 1, bottom - 1), (left, bottom - 1)], fill=fill)
    return big.resize((size, size), Image.Resampling.BOX)


def make_dataset(count: int, seed: int, size: int = SIZE) -> tuple[np.ndarray, list[Scene]]:
    """``count`` images as uint8 (count, size, size, 3) and their scenes."""
    rng = random.Random(seed)
    scenes = [random_scene(rng, size) for _ in range(count)]
    images = np.stack([np.asarray(draw(scene, size)) for scene in scenes])
    return images, scenes


def all_captions() -> list[str]:
    return [
        Scene(colour, shape, background, (0, 0, 1, 1)).caption
        for colour in PALETTE
        for shape in SHAPES
        for background in PALETTE
        if background != colour
    ]
