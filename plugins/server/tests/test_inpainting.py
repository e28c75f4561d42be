"""The web UI's inpainting options, without a model: the region "only masked" generates, and the fill."""

from __future__ import annotations

import numpy as np
from difframe_server.inpainting import crop_box, fill_masked, plan
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image, ImageDraw


@given(
    size=st.tuples(st.integers(16, 200), st.integers(16, 200)),
    corner=st.tuples(st.floats(0, 0.9), st.floats(0, 0.9)),
    extent=st.tuples(st.floats(0.01, 1), st.floats(0.01, 1)),
    padding=st.integers(0, 64),
    target=st.tuples(st.integers(1, 8), st.integers(1, 8)),
)
def test_the_region_holds_the_mask_stays_inside_and_keeps_the_aspect_ratio(size, corner, extent, padding, target):
    w, h = size
    x1, y1 = int(corner[0] * w), int(corner[1] * h)
    x2, y2 = min(w, x1 + max(1, int(extent[0] * w))), min(h, y1 + max(1, int(extent[1] * h)))
    mask = Image.new("L", size, 0)
    mask.paste(255, (x1, y1, x2, y2))
    left, top, right, bottom = crop_box(mask, padding, target[0] * 64, target[1] * 64)
    assert 0 <= left < right <= w and 0 <= top < bottom <= h
    assert left <= x1 and top <= y1 and right >= x2 and bottom >= y2
    ratio = target[0] / target[1]
    if right - left < w and bottom - top < h:  # not clipped by the image: the request's aspect ratio
        assert abs((right - left) / (bottom - top) - ratio) <= ratio * 2 / min(right - left, bottom - top) + 1e-9


def test_fill_takes_the_colours_around_the_mask():
    image = Image.new("RGB", (64, 64), "white")
    image.paste((200, 0, 0), (0, 0, 32, 64))
    image.paste((0, 0, 200), (32, 0, 64, 64))
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle((24, 24, 39, 39), fill=255)
    image.paste((0, 255, 0), (24, 24, 40, 40))  # what the mask hides must not show through
    filled = np.asarray(fill_masked(image, mask), dtype=int)
    assert (filled[mask_array(mask) == 0] == np.asarray(image)[mask_array(mask) == 0]).all()
    assert filled[32, 25, 0] > filled[32, 25, 2] and filled[32, 38, 2] > filled[32, 38, 0]  # nearer side wins
    assert filled[24:40, 24:40, 1].max() < 40  # no green


def test_only_masked_generates_the_region_and_pastes_it_back():
    image = Image.new("RGB", (128, 128), "blue")
    mask = Image.new("L", (128, 128), 0)
    mask.paste(255, (90, 90, 110, 110))
    job = plan(image, mask, width=64, height=64, resize_mode=0, blur=(0, 0), fill=1, full_res=True, padding=8,
               invert=False)  # fmt: skip
    assert job.image.size == job.mask.size == (64, 64) and job.box is not None
    out = np.asarray(job.finish(Image.new("RGB", (64, 64), "red")), dtype=int)
    assert out.shape == (128, 128, 3)
    assert (out[95:105, 95:105] == [255, 0, 0]).all() and (out[:80, :80] == [0, 0, 255]).all()


def mask_array(mask: Image.Image) -> np.ndarray:
    return np.asarray(mask)
