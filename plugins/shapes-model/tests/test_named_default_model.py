"""The built-in model named by its folder is built exactly as the default one: same options, same pixels."""

from __future__ import annotations

import numpy as np


def test_the_built_in_folder_named_gives_the_default_builds_pixels():
    from difframe import Framework
    from difframe.prepacking import uses_prepacked_convolutions
    from difframe_shapes_model import WEIGHTS

    framework = Framework()
    call = dict(seed=3, num_inference_steps=4, output_type="np")
    default = framework.build("stable-diffusion", progress=False)
    named = framework.build("stable-diffusion", model=WEIGHTS, progress=False)
    assert uses_prepacked_convolutions(named.unet) == uses_prepacked_convolutions(default.unet)
    assert np.array_equal(named("a red circle", **call).images, default("a red circle", **call).images)
    unpacked = framework.build("stable-diffusion", model=WEIGHTS, progress=False, prepacked_convolutions=False)
    assert not uses_prepacked_convolutions(unpacked.unet)  # an option given still wins
