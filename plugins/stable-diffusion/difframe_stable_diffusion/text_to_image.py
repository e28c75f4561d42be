"""Text-to-image: noise from each image's seed, denoised under the prompt's guidance."""

from __future__ import annotations

from typing import Any

import torch

from .base import StableDiffusionBase
from .loop import Chunk, Start
from .networks import NetworksMixin
from .noise import randn
from .output import StableDiffusionOutput
from .request import GenerationRequest


class StableDiffusionPipeline(NetworksMixin, StableDiffusionBase):
    """``pipe("a watercolor fox", seed=7).images[0]``; lists of prompts, several images per prompt, one seed each."""

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        **settings: Any,
    ) -> StableDiffusionOutput:
        """Generate images. ``seed=s`` gives image i the seed s+i; ``seeds=[...]`` gives each image its own.

        callback_on_step_end(pipe, step, timestep, tensors) may return {"latents": ...} to replace the latents;
        ``pipe.interrupt()`` inside it stops after that step. ``settings``: the keyword arguments of
        GenerationRequest (height, width, num_inference_steps, guidance_scale, seed, ...; docs/pipelines.md).
        """
        return self.generate(GenerationRequest.of_call(prompt, negative_prompt, settings))

    def prepare_inputs(self, request: GenerationRequest) -> None:
        request.height = self.default_size() if request.height is None else request.height  # 0 is an error
        request.width = self.default_size() if request.width is None else request.width
        self.check_size(request.height, request.width)

    def check_chunk_inputs(self, request: GenerationRequest) -> None:
        latents, factor = request.latents, self.vae_scale_factor
        expected = (self.unet.config.in_channels, request.height // factor, request.width // factor)
        if latents is not None and tuple(latents.shape[1:]) != expected:
            raise ValueError(
                f"latents must be ({request.total}, {', '.join(map(str, expected))}), got {tuple(latents.shape)}"
            )

    def initial_latents(self, chunk: Chunk) -> Start:
        sampler = chunk.sampler
        timesteps = self.set_timesteps(chunk.request.num_inference_steps, sampler)
        if chunk.latents is None:
            noise = randn(self.latent_shape(chunk), chunk.generators, self.execution_device, chunk.embeds.dtype)
        else:
            noise = chunk.latents.to(self.execution_device)
        return Start(noise * sampler.init_noise_sigma, timesteps)
