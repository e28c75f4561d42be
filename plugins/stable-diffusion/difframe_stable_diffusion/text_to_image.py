"""Text-to-image: noise from each image's seed, denoised under the prompt's guidance."""

from __future__ import annotations

from typing import Any

import torch

from .common import Chunk, StableDiffusionBase, StableDiffusionOutput
from .networks import NetworksMixin


class StableDiffusionPipeline(NetworksMixin, StableDiffusionBase):
    """``pipe("a watercolor fox", seed=7).images[0]``; lists of prompts, several images per prompt, one seed each."""

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        *,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        guidance_rescale: float = 0.0,
        num_images_per_prompt: int = 1,
        seed: int | list[int] | None = None,
        seeds: list[int] | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        clip_skip: int | None = None,
        output_type: str = "pil",
        callback_on_step_end: Any = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        memory_budget: int | str | None = None,
        ip_adapter_image: Any = None,
        ip_adapter_image_embeds: list[torch.Tensor] | None = None,
        ip_adapter_masks: list[torch.Tensor | None] | None = None,
    ) -> StableDiffusionOutput:
        """Generate images. ``seed=s`` gives image i the seed s+i; ``seeds=[...]`` gives each image its own.

        callback_on_step_end(pipe, step, timestep, tensors) may return {"latents": ...} to replace the latents;
        ``pipe.interrupt()`` inside it stops after that step.
        """
        prompts, negatives, count = self._check_common(
            prompt,
            negative_prompt,
            prompt_embeds,
            negative_prompt_embeds,
            num_inference_steps,
            guidance_scale,
            guidance_rescale,
            num_images_per_prompt,
            output_type,
            callback_on_step_end,
            clip_skip,
        )
        height = self.default_size() if height is None else height  # 0 is an error, not the default
        width = self.default_size() if width is None else width
        cross_attention_kwargs = self.image_prompt_kwargs(  # IP-Adapter (docs/ip-adapter.md)
            cross_attention_kwargs, ip_adapter_image, ip_adapter_image_embeds, ip_adapter_masks, count=count,
            num_images_per_prompt=num_images_per_prompt, guidance_scale=guidance_scale, height=height, width=width,
        )  # fmt: skip
        return self._generate(
            prompts=prompts,
            negatives=negatives,
            count=count,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            height=height,
            width=width,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            guidance_rescale=guidance_rescale,
            num_images_per_prompt=num_images_per_prompt,
            seed=seed,
            seeds=seeds,
            generator=generator,
            latents=latents,
            clip_skip=clip_skip,
            output_type=output_type,
            callback_on_step_end=callback_on_step_end,
            cross_attention_kwargs=cross_attention_kwargs,
            memory_budget=memory_budget,
        )

    def check_chunk_inputs(self, height: int, width: int, total: int, latents: torch.Tensor | None) -> None:
        super().check_chunk_inputs(height, width, total, latents)
        expected = (self.unet.config.in_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
        if latents is not None and tuple(latents.shape[1:]) != expected:
            raise ValueError(f"latents must be ({total}, {', '.join(map(str, expected))}), got {tuple(latents.shape)}")

    def run_chunk(self, chunk: Chunk, **settings: Any) -> torch.Tensor:
        sampler = self.sampler_of(chunk)
        height, width = settings["height"], settings["width"]
        timesteps = self.set_timesteps(settings["num_inference_steps"], sampler)
        shape = (
            chunk.size,
            self.unet.config.in_channels,
            height // self.vae_scale_factor,
            width // self.vae_scale_factor,
        )
        if chunk.latents is None:
            noise = self.randn(shape, chunk.generators, self.execution_device, chunk.embeds.dtype)
        else:
            noise = chunk.latents.to(self.execution_device)
        latents = noise * sampler.init_noise_sigma
        return self.denoise(
            chunk,
            latents,
            timesteps,
            guidance_scale=settings["guidance_scale"],
            guidance_rescale=settings["guidance_rescale"],
            cross_attention_kwargs=settings["cross_attention_kwargs"],
            callback=settings["callback"],
            progress=settings["progress"],
        )
