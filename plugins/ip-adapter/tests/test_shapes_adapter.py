"""The shipped IP-Adapter of the built-in shapes model, measured with the built-in scorer on reference images the
training never drew (a small sample; the model card's table is the full measurement)."""

from __future__ import annotations

import pytest
from difframe_ip_adapter.shapes.evaluate import FOLDER, WEIGHT_NAME, evaluate, load

pytestmark = pytest.mark.skipif(
    not (FOLDER / "models" / WEIGHT_NAME).is_file(), reason="the shapes adapter is not in this checkout"
)


def test_image_prompt_follows_the_reference_and_rises_with_scale():
    from difframe import Framework

    pipe = Framework().build("stable-diffusion")
    pipe.set_progress_bar_config(disable=True)
    load(pipe)
    rows = evaluate(pipe, [0.0, 1.0], images=16, steps=10)
    empty = {row["scale"]: row for row in rows if row["prompt"] == "empty"}
    against = {row["scale"]: row for row in rows if row["prompt"] == "contradicting"}
    assert empty[1.0]["image colours"] >= 70.0  # the card reports the full 60-image figure
    assert empty[1.0]["image colours"] > empty[0.0]["image colours"] + 30
    assert empty[1.0]["image shape kind"] > empty[0.0]["image shape kind"]
    # a prompt that contradicts the image: the scale moves the result from the text to the image
    assert against[0.0]["text colours"] > against[1.0]["text colours"]
    assert against[1.0]["image colours"] > against[0.0]["image colours"]
