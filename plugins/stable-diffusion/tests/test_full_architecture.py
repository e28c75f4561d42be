"""The full Stable Diffusion 1.5 architecture (random weights) at 256x256: our pipeline equals the reference's."""

from __future__ import annotations

import gc

import numpy as np
import pytest


@pytest.mark.slow
def test_sd15_text_to_image_matches_reference(h, framework, sd15_model):
    import diffusers

    folder = sd15_model
    kwargs = dict(height=256, width=256, num_inference_steps=2, guidance_scale=7.5, output_type="np")
    prompt, negative = "a watercolor painting of a fox in a forest", "blurry"

    # loaded back from the folder, as ours is (the in-memory objects may hold values the files do not)
    reference = diffusers.StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    reference.scheduler = diffusers.DPMSolverMultistepScheduler.from_config(reference.scheduler.config)
    reference.set_progress_bar_config(disable=True)
    theirs = reference(prompt, negative_prompt=negative, generator=h.generators([7]), **kwargs).images
    del reference
    gc.collect()  # one full model in memory at a time

    pipe = h.build(framework, folder, scheduler="dpmpp")
    ours = pipe(prompt, negative_prompt=negative, seed=7, **kwargs)
    assert ours.images.shape == theirs.shape == (1, 256, 256, 3)
    difference = float(np.abs(ours.images - theirs).max())
    assert difference <= 1e-4, f"max abs difference {difference:.2e}"
    assert ours.parameters[0].to_text().endswith("Seed: 7, Size: 256x256, Model: sd15-random")
