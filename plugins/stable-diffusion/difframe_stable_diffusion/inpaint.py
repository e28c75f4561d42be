"""Inpainting: repaint where the mask is white, keep the rest.

With a plain (4-channel) checkpoint, after every step the kept region is reset to the init image's latents noised
to the next timestep. With an inpainting UNet (9 channels), the mask and the masked image's latents are fed to the
UNet beside the latents.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F

from .base import StableDiffusionBase
from .images import as_image_list, image_size, preprocess_images, preprocess_masks
from .loop import Chunk, Start
from .networks import NetworksMixin
from .noise import randn
from .output import StableDiffusionOutput
from .request import GenerationRequest, check_strength


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
        **settings: Any,
    ) -> StableDiffusionOutput:
        request = replace(GenerationRequest.of_call(prompt, negative_prompt, settings), strength=strength)
        return self.generate(request, image=image, mask_image=mask_image)

    def prepare_inputs(self, request: GenerationRequest, image: Any = None, mask_image: Any = None) -> None:
        check_strength(request.strength, request.num_inference_steps)
        request.strength = float(request.strength)
        images = as_image_list(image, "image")
        masks = as_image_list(mask_image, "mask_image")
        for name, items in (("image", images), ("mask_image", masks)):
            if len(items) not in (1, request.count):
                raise ValueError(f"got {len(items)} {name}s for {request.count} prompts: pass one, or one per prompt")
        sizes = {image_size(i) for i in images + masks}
        if len(sizes) > 1:
            raise ValueError(
                "image and mask_image must have the same size; got " + ", ".join(f"{w}x{h}" for h, w in sorted(sizes))
            )
        self.check_unet_channels()
        self.size_from_image(request, images[0])
        height, width = request.height, request.width
        request.inputs = {
            "image": preprocess_images(images, height, width),
            "mask": preprocess_masks(masks, height, width),
        }
        if not bool(request.inputs["mask"].any()):
            warnings.warn(
                "mask_image is black everywhere: inpainting repaints nothing and returns the image re-encoded (white "
                "mask pixels are repainted)",
                UserWarning,
                stacklevel=4,
            )

    def check_unet_channels(self) -> None:
        channels = self.unet.config.in_channels
        latent = self.vae.config.latent_channels
        if channels not in (latent, 2 * latent + 1):
            raise ValueError(
                f"the UNet takes {channels} input channels; inpainting needs {latent} (a plain checkpoint) or "
                f"{2 * latent + 1} (an inpainting checkpoint: latents, mask, masked-image latents)"
            )

    def initial_latents(self, chunk: Chunk) -> Start:
        sampler, strength = chunk.sampler, chunk.request.strength
        timesteps = self.strength_timesteps(chunk.request.num_inference_steps, strength, sampler)
        device, dtype, generators = self.execution_device, chunk.embeds.dtype, chunk.generators
        latent_channels = self.vae.config.latent_channels
        plain_unet = self.unet.config.in_channels == latent_channels
        image, mask = chunk.extras["image"], chunk.extras["mask"]
        shape = self.latent_shape(chunk, latent_channels)

        # each generator is used in the reference's order: init image latents, noise, masked-image latents
        image_latents = None
        if plain_unet or (chunk.latents is None and strength != 1.0):
            image_latents = self.encode_images(image.to(dtype=dtype), generators)
        if chunk.latents is None:
            noise = randn(shape, generators, device, dtype)
            if strength == 1.0:
                latents = noise * sampler.init_noise_sigma
            else:
                latents = sampler.add_noise(image_latents, noise, timesteps[:1].repeat(chunk.size))
        else:
            noise = chunk.latents.to(device)
            latents = noise * sampler.init_noise_sigma

        masked_image = image * (mask < 0.5)
        latent_mask = F.interpolate(mask, size=shape[-2:]).to(device=device, dtype=dtype)
        masked_latents = self.encode_images(masked_image.to(dtype=dtype), generators).to(dtype=dtype)
        if not plain_unet:
            extra = torch.cat([latent_mask, masked_latents], dim=1)
            return Start(latents, timesteps, model_extra=torch.cat([extra] * 2) if chunk.guided else extra)

        def keep_unmasked(i: int, t: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
            known = image_latents
            if i < len(timesteps) - 1:
                known = sampler.add_noise(image_latents, noise, torch.tensor([timesteps[i + 1]]))
            return (1 - latent_mask) * known + latent_mask * current

        return Start(latents, timesteps, after_step=keep_unmasked)
