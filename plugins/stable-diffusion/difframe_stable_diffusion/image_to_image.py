"""Image-to-image: the init image's latents, noised to ``strength``, then denoised under the prompt."""

from __future__ import annotations

from typing import Any

import torch

from .common import Chunk, StableDiffusionBase, StableDiffusionOutput
from .images import as_image_list, default_size, image_size, preprocess_images
from .networks import NetworksMixin


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
        images = as_image_list(image, "image")
        check_strength(strength, num_inference_steps)
        if len(images) not in (1, count):
            raise ValueError(f"got {len(images)} images for {count} prompts: pass one image, or one per prompt")
        sizes = {image_size(i) for i in images}
        if len(sizes) > 1:
            raise ValueError(f"the init images have different sizes {sorted(sizes)}; pass images of one size")
        if height is None or width is None:  # 0 is an error, not the default
            default_h, default_w = default_size(images[0], self.size_multiple)
            height = default_h if height is None else height
            width = default_w if width is None else width
        self.check_size(height, width)
        pixels = preprocess_images(images, height, width)
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
            latents=None,
            clip_skip=clip_skip,
            output_type=output_type,
            callback_on_step_end=callback_on_step_end,
            cross_attention_kwargs=cross_attention_kwargs,
            memory_budget=memory_budget,
            strength=float(strength),
            inputs={"image": pixels},
        )

    def chunk_inputs(self, inputs: dict[str, Any], jobs: list[Any]) -> dict[str, Any]:
        return {name: pick(tensor, jobs) for name, tensor in inputs.items()}

    def run_chunk(self, chunk: Chunk, **settings: Any) -> torch.Tensor:
        sampler = self.sampler_of(chunk)
        timesteps = self.strength_timesteps(settings["num_inference_steps"], settings["strength"], sampler)
        dtype = chunk.embeds.dtype
        init_latents = self.encode_images(chunk.extras["image"].to(dtype=dtype), chunk.generators)
        noise = self.randn(init_latents.shape, chunk.generators, self.execution_device, dtype)
        latents = sampler.add_noise(init_latents, noise, timesteps[:1].repeat(chunk.size))
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


def pick(tensor: torch.Tensor, jobs: list[Any]) -> torch.Tensor:
    """Rows of a per-prompt tensor (or a single row shared by every prompt) for the given images."""
    if tensor.shape[0] == 1:
        return tensor.expand(len(jobs), *tensor.shape[1:]).contiguous()
    return tensor[[job.prompt_index for job in jobs]]


def check_strength(strength: Any, num_inference_steps: Any) -> None:
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength!r}")
    if isinstance(num_inference_steps, int) and int(num_inference_steps * strength) < 1:
        raise ValueError(
            f"strength {strength} x num_inference_steps {num_inference_steps} leaves no denoising step; raise "
            "strength or num_inference_steps"
        )
