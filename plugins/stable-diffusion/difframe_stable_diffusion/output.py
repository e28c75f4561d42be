"""Latents -> images, the output types, and each image's generation parameters (what its PNG records)."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .batching import ImageJob
from .metadata import GenerationParameters, png_info
from .request import GenerationRequest, check_scaling_factor
from .saving import write_png

INTERRUPTED_KEY = "Interrupted"  # in an unfinished image's parameters: "after 3 of 10 steps"


@dataclass
class StableDiffusionOutput:
    """Images (a list of PIL images, an (N, H, W, 3) float array, an (N, 3, H, W) tensor or latents), each image's
    seed and generation parameters, and whether a callback interrupted the run.

    After ``pipe.interrupt()`` the images of the chunk that was cut short are still returned, partly denoised:
    ``finished[i]`` is False for them, and their parameters record the steps that ran ("Steps: 3", "Interrupted:
    after 3 of 10 steps"). Images of later chunks are not made.
    """

    images: Any
    seeds: list[int | None]
    parameters: list[GenerationParameters]
    interrupted: bool = False
    nsfw_content_detected: None = None  # no safety checker; kept for code written against the reference
    finished: list[bool] = field(default_factory=list)

    def __iter__(self):
        return iter((self.images, self.nsfw_content_detected))

    def save(self, folder: str | os.PathLike[str], prefix: str = "", *, include_unfinished: bool = False) -> list[Path]:
        """Save PIL images as PNGs with their parameters embedded: ``<prefix><index>-<seed>.png`` (``_1``, ``_2``
        ... where the name is taken; nothing is overwritten). Each file is written under a temporary name and
        renamed when complete. Images cut short by ``interrupt()`` are saved only with ``include_unfinished``."""
        if not isinstance(self.images, list):
            raise TypeError("only output_type='pil' images can be saved as PNG")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        finished = self.finished or [True] * len(self.images)
        skipped = 0
        paths = []
        for index, (image, params, done) in enumerate(zip(self.images, self.parameters, finished)):
            if not done and not include_unfinished:
                skipped += 1
                continue
            stem = f"{prefix}{index:05d}" + (f"-{params.seed}" if params.seed is not None else "")
            paths.append(write_png(image, folder, stem + ("" if done else "-unfinished"), png_info(params)))
        if skipped:
            warnings.warn(
                f"{skipped} image(s) cut short by interrupt() were not saved; pass include_unfinished=True to save "
                "them (their parameters say how many steps ran)",
                UserWarning,
                stacklevel=2,
            )
        return paths


class AutoencoderMixin:
    """Images <-> latents through the pipeline's VAE, and latents -> the call's output type."""

    def check_vae(self) -> None:
        check_scaling_factor(getattr(self.vae.config, "scaling_factor", None), "the pipeline's VAE")

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> images (N, 3, H, W) in [0, 1] (NaN kept: the caller checks)."""
        image = self._run("vae", self.vae, self.vae.decode, latents / self.vae.config.scaling_factor)
        return (image / 2 + 0.5).clamp(0, 1)

    def encode_images(self, images: torch.Tensor, generators: Any) -> torch.Tensor:
        """Images (N, 3, H, W) in [-1, 1] -> scaled latents, each image sampled with its own generator."""
        images = images.to(device=self.execution_device, dtype=self.vae.dtype)
        if isinstance(generators, list):
            parts = [
                self._run("vae", self.vae, self.vae.encode, images[i : i + 1]).sample(generators[i])
                for i in range(images.shape[0])
            ]
            latents = torch.cat(parts)
        else:
            latents = self._run("vae", self.vae, self.vae.encode, images).sample(generators)
        return self.vae.config.scaling_factor * latents

    @staticmethod
    def to_output(images: torch.Tensor, output_type: str) -> Any:
        if output_type == "pt":
            return images
        array = images.cpu().permute(0, 2, 3, 1).float().numpy()
        if output_type == "np":
            return array
        from PIL import Image

        return [Image.fromarray(a) for a in (array * 255).round().astype(np.uint8)]


def image_parameters(
    request: GenerationRequest,
    jobs: list[ImageJob],
    steps_done: list[int],
    steps: int,
    *,
    sampler: str | None,
    model: str | None,
    extra: dict[str, Any],
) -> list[GenerationParameters]:
    """Each made image's parameters; an unfinished one records the steps that ran."""
    prompts, negatives, guided = request.prompts, request.negatives, request.guided
    return [
        GenerationParameters(
            prompt=prompts[job.prompt_index] if prompts else "",
            negative_prompt=(negatives[job.prompt_index] if negatives else "") if guided else "",
            steps=request.num_inference_steps if ran == steps else ran,
            scheduler=sampler,
            guidance_scale=float(request.guidance_scale),
            seed=job.seed,
            width=request.width,
            height=request.height,
            model=model,
            clip_skip=request.clip_skip,
            guidance_rescale=float(request.guidance_rescale) if guided else 0.0,
            strength=request.strength,
            extra={**extra, **({} if ran == steps else {INTERRUPTED_KEY: f"after {ran} of {steps} steps"})},
        )
        for job, ran in zip(jobs, steps_done)
    ]


def make_output(
    pipe: Any, request: GenerationRequest, latents: list[torch.Tensor], parameters: list[GenerationParameters]
) -> Any:
    images = torch.cat(latents) if latents else torch.empty(0)
    if request.output_type == "latent":
        return images
    output = pipe.to_output(images, request.output_type)
    if request.output_type == "pil":
        for image, params in zip(output, parameters):
            image.info["parameters"] = params.to_text()
    return output
