"""Inpainting: repaint where the mask is white, keep the rest.

With a plain (4-channel) checkpoint, after every step the kept region is reset to the init image's latents noised
to the next timestep. With an inpainting UNet (9 channels), the mask and the masked image's latents are fed to the
UNet beside the latents.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F

from .common import Chunk, StableDiffusionBase, StableDiffusionOutput
from .image_to_image import check_strength, pick
from .images import as_image_list, default_size, image_size, preprocess_images, preprocess_masks
from .networks import NetworksMixin


class StableDiffusionInpaintPipeline(NetworksMixin, StableDiffusionBase):
    """``pipe("a red sofa", image=room, mask_image=mask, seed=7)``: white mask pixels are repainted."""

    layout_name = ("diffusers", "StableDiffusionInpaintPipeline")

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        image: Any = None,
        mask_image: Any = None,
        negative_prompt: str | list[str] | None = None,
        *,
        strength: float = 1.0,
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
        check_strength(strength, num_inference_steps)
        images = as_image_list(image, "image")
        masks = as_image_list(mask_image, "mask_image")
        for name, items in (("image", images), ("mask_image", masks)):
            if len(items) not in (1, count):
                raise ValueError(f"got {len(items)} {name}s for {count} prompts: pass one, or one per prompt")
        sizes = {image_size(i) for i in images + masks}
        if len(sizes) > 1:
            raise ValueError(
                "image and mask_image must have the same size; got " + ", ".join(f"{w}x{h}" for h, w in sorted(sizes))
            )
        self.check_unet_channels()
        if height is None or width is None:  # 0 is an error, not the default
            default_h, default_w = default_size(images[0], self.size_multiple)
            height = default_h if height is None else height
            width = default_w if width is None else width
        self.check_size(height, width)
        inputs = {"image": preprocess_images(images, height, width), "mask": preprocess_masks(masks, height, width)}
        if not bool(inputs["mask"].any()):
            warnings.warn(
                "mask_image is black everywhere: inpainting repaints nothing and returns the image re-encoded (white "
                "mask pixels are repainted)",
                UserWarning,
                stacklevel=2,
            )
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
            strength=float(strength),
            inputs=inputs,
        )

    def check_unet_channels(self) -> None:
        channels = self.unet.config.in_channels
        latent = self.vae.config.latent_channels
        if channels not in (latent, 2 * latent + 1):
            raise ValueError(
                f"the UNet takes {channels} input channels; inpainting needs {latent} (a plain checkpoint) or "
                f"{2 * latent + 1} (an inpainting checkpoint: latents, mask, masked-image latents)"
            )

    def chunk_inputs(self, inputs: dict[str, Any], jobs: list[Any]) -> dict[str, Any]:
        return {name: pick(tensor, jobs) for name, tensor in inputs.items()}

    def run_chunk(self, chunk: Chunk, **settings: Any) -> torch.Tensor:
        sampler = self.sampler_of(chunk)
        height, width, strength = settings["height"], settings["width"], settings["strength"]
        timesteps = self.strength_timesteps(settings["num_inference_steps"], strength, sampler)
        device, dtype, generators = self.execution_device, chunk.embeds.dtype, chunk.generators
        latent_channels = self.vae.config.latent_channels
        plain_unet = self.unet.config.in_channels == latent_channels
        full_strength = strength == 1.0
        image, mask = chunk.extras["image"], chunk.extras["mask"]
        shape = (chunk.size, latent_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)

        # each generator is used in the reference's order: init image latents, noise, masked-image latents
        image_latents = None
        if plain_unet or (chunk.latents is None and not full_strength):
            image_latents = self.encode_images(image.to(dtype=dtype), generators)
        if chunk.latents is None:
            noise = self.randn(shape, generators, device, dtype)
            if full_strength:
                latents = noise * sampler.init_noise_sigma
            else:
                latents = sampler.add_noise(image_latents, noise, timesteps[:1].repeat(chunk.size))
        else:
            noise = chunk.latents.to(device)
            latents = noise * sampler.init_noise_sigma

        masked_image = image * (mask < 0.5)
        latent_mask = F.interpolate(mask, size=shape[-2:]).to(device=device, dtype=dtype)
        masked_latents = self.encode_images(masked_image.to(dtype=dtype), generators).to(dtype=dtype)

        model_extra = None
        if not plain_unet:
            extra = torch.cat([latent_mask, masked_latents], dim=1)
            model_extra = torch.cat([extra] * 2) if chunk.guided else extra

        def keep_unmasked(i: int, t: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
            known = image_latents
            if i < len(timesteps) - 1:
                known = sampler.add_noise(image_latents, noise, torch.tensor([timesteps[i + 1]]))
            return (1 - latent_mask) * known + latent_mask * current

        return self.denoise(
            chunk,
            latents,
            timesteps,
            guidance_scale=settings["guidance_scale"],
            guidance_rescale=settings["guidance_rescale"],
            cross_attention_kwargs=settings["cross_attention_kwargs"],
            callback=settings["callback"],
            progress=settings["progress"],
            model_extra=model_extra,
            after_step=keep_unmasked if plain_unet else None,
        )
