"""The comma backtrack of long prompts (difframe_clip; docs/models.md) through a pipeline: a setting other than the
web UI's default 20 is recorded in the PNG, and `--from-png` makes the image again with it."""

from __future__ import annotations

import numpy as np
from PIL import Image

# 60 + 1 + 20 tokens, the comma 15 tokens before the 75-token cut: by default the cut moves to just after it
PROMPT = "cat " * 60 + ", " + "dog " * 20
CALL = dict(seed=5, num_inference_steps=2, width=64, height=64)


def test_comma_backtrack_is_recorded_and_reproduced(tmp_path):
    from difframe import Framework
    from difframe.cli import main

    images = {}
    for backtrack in (20, 0):
        options = {} if backtrack == 20 else {"conditioner_options": {"comma_backtrack": backtrack}}
        pipe = Framework().build("stable-diffusion", **options)
        pipe.set_progress_bar_config(disable=True)
        [images[backtrack]] = pipe(PROMPT, **CALL).save(tmp_path / str(backtrack))
    recorded = {n: Image.open(path).text["parameters"] for n, path in images.items()}
    assert "Conditioner" not in recorded[20]  # the default, as in the web UI: nothing to say
    assert 'Conditioner: "clip-text {\\"comma_backtrack\\": 0}"' in recorded[0]
    pixels = {n: np.asarray(Image.open(path)) for n, path in images.items()}
    assert not np.array_equal(pixels[20], pixels[0])  # the chunks differ, so does the image
    again = tmp_path / "again"
    assert main(["generate", "--from-png", str(images[0]), "-o", str(again), "--no-progress"]) == 0
    [copy] = again.glob("*.png")
    assert np.array_equal(np.asarray(Image.open(copy)), pixels[0])
