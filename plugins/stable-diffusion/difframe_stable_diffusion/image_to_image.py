"""Image-to-image: the init image's latents, noised to ``strength``, then denoised under the prompt."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from .base import StableDiffusionBase
from .images import as_image_list, image_size, preprocess_images
from .loop import Chunk, Start
from .networks import NetworksMixin
from .noise import randn
from .output import StableDiffusionOutput
from .request import GenerationRequest, check_strength


class StableDiffusionImg2ImgPipeline(NetworksMixin, StableDiffusionBase):
    """``pipe("a fox, oil painting", image=photo, strength=0.6, seed=7)``.

    ``image``: one image for every prompt, or one per prompt. ``strength`` in [0, 1]: how much of the schedule runs
    (1 ignores the image's content; small values keep it).
    """

    layout_name = ("diffusers", "StableDiffusionImg2ImgPipeline")

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        image: Any = None,
        strength: float = 0.8,
        negative_prompt: str | list[str] | None = None,
        **settings: Any,
    ) -> StableDiffusionOutput:
        request = GenerationRequest.of_call(prompt, negative_prompt, settings, not_taken=("latents",))
        return self.generate(replace(request, strength=strength), image=image)

    def prepare_inputs(self, request: GenerationRequest, image: Any = None) -> None:
        images = as_image_list(image, "image")
        check_strength(request.strength, request.num_inference_steps)
        request.strength = float(request.strength)
        if len(images) not in (1, request.count):
            raise ValueError(f"got {len(images)} images for {request.count} prompts: pass one image, or one per prompt")
        sizes = {image_size(i) for i in images}
        if len(sizes) > 1:
            raise ValueError(f"the init images have different sizes {sorted(sizes)}; pass images of one size")
        self.size_from_image(request, images[0])
        request.inputs = {"image": preprocess_images(images, request.height, request.width)}

    def initial_latents(self, chunk: Chunk) -> Start:
        sampler, request = chunk.sampler, chunk.request
        timesteps = self.strength_timesteps(request.num_inference_steps, request.strength, sampler)
        dtype = chunk.embeds.dtype
        init_latents = self.encode_images(chunk.extras["image"].to(dtype=dtype), chunk.generators)
        noise = randn(init_latents.shape, chunk.generators, self.execution_device, dtype)
        return Start(sampler.add_noise(init_latents, noise, timesteps[:1].repeat(chunk.size)), timesteps)
