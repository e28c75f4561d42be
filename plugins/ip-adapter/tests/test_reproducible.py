"""Reproducible mode (the pipelines' default) with image prompts: image i of a batch is the same bit for bit as the
image made alone, because each image prompt goes through the image encoder, and each output image's embeddings
through the adapter's projection, in a call of its own (as each text goes through the text encoder)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from difframe_ip_adapter.testing import colour_image, write_adapter_folder

KWARGS = dict(num_inference_steps=3, output_type="np", width=64, height=64)
PROMPTS = ["a red circle", "a blue square", "a green triangle"]


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """Random adapters (plain and Plus) sized for the built-in model's UNet, with the tiny image encoder."""
    from difframe.framework import packaged_folder
    from difframe_stable_diffusion.plugin import BUILT_IN_MODEL

    config = json.loads((Path(packaged_folder(BUILT_IN_MODEL)) / "unet" / "config.json").read_text())
    unet_config = {key: value for key, value in config.items() if not key.startswith("_")}
    return write_adapter_folder(tmp_path_factory.mktemp("adapters"), unet_config, ("plain", "plus"))


@pytest.fixture
def two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # several threads: where matrix kernels would block by batch size
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("kind", ["plain", "plus"])
def test_image_of_a_batch_is_bit_identical_to_it_alone(adapters, two_threads, kind):
    from difframe import Framework

    pipe = Framework().build("stable-diffusion")
    pipe.set_progress_bar_config(disable=True)
    pipe.load_ip_adapter(adapters, subfolder="models", weight_name=f"ip-adapter-{kind}.safetensors")
    assert pipe.reproducible  # the default
    images = [[colour_image(seed=10 + i)] for i in range(3)]  # a different image prompt per prompt
    batch = pipe(PROMPTS, ip_adapter_image=images, seeds=[1, 2, 3], **KWARGS).images
    for i, prompt in enumerate(PROMPTS):
        alone = pipe(prompt, ip_adapter_image=images[i][0], seed=1 + i, **KWARGS).images[0]
        assert batch[i].tobytes() == alone.tobytes(), f"image {i}"
    # the embeddings prepare_ip_adapter_image_embeds returns are encoded as a call encodes them
    embeds = pipe.prepare_ip_adapter_image_embeds(images, None, "cpu", 1, True)
    again = pipe(PROMPTS, ip_adapter_image_embeds=embeds, seeds=[1, 2, 3], **KWARGS).images
    assert again.tobytes() == batch.tobytes()
