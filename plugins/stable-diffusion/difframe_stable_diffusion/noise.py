"""Seeds and noise: one seed (or the caller's generator) per image, and each image's noise from its own generator,
so image i's starting latents do not depend on the batch it is in."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .batching import plan_seeds
from .request import GenerationRequest

Generators = list[torch.Generator] | torch.Generator | None


def plan_noise(request: GenerationRequest) -> tuple[list[int | None], Generators]:
    """Per-image seeds (None where the caller's generator or latents are the noise), or the caller's generator(s)."""
    total, seed, seeds, generator = request.total, request.seed, request.seeds, request.generator
    if generator is not None:
        if seed is not None or seeds is not None:
            raise ValueError("pass seed/seeds or generator, not both")
        items = generator if isinstance(generator, list) else [generator]
        if not all(isinstance(g, torch.Generator) for g in items):
            raise TypeError("generator must be a torch.Generator or a list of them; for a number, pass seed=")
        if isinstance(generator, list):
            if len(generator) != total:
                raise ValueError(
                    f"got {len(generator)} generators for {total} images (prompts x num_images_per_prompt)"
                )
            return [None] * total, list(generator)
        return [None] * total, generator
    if request.latents is not None and seed is None and seeds is None:
        return [None] * total, None  # the caller's latents are the noise: no seed reproduces them
    return list(plan_seeds(total, seed, seeds)), None


def chunk_generators(chunk_seeds: list[int | None], given: Generators, start: int, stop: int) -> Generators:
    """The generators of images start..stop: one per seed, or the caller's."""
    if given is None:
        if any(s is None for s in chunk_seeds):
            return None
        return [torch.Generator(device="cpu").manual_seed(int(s)) for s in chunk_seeds]
    if isinstance(given, list):
        return given[start:stop]
    return given  # one generator for the whole batch (images then depend on their position)


def randn(shape: Sequence[int], generators: Generators, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Noise of ``shape``; with a list of generators, image i's noise comes from generator i alone."""
    if isinstance(generators, list):
        parts = [
            torch.randn((1, *shape[1:]), generator=g, device=g.device, dtype=dtype) for g in generators[: shape[0]]
        ]
        return torch.cat(parts).to(device)
    rand_device = generators.device if generators is not None else torch.device("cpu")
    return torch.randn(tuple(shape), generator=generators, device=rand_device, dtype=dtype).to(device)


def check_latents(latents: Any, total: int) -> None:
    if latents is not None and (latents.ndim != 4 or latents.shape[0] != total):
        raise ValueError(f"latents must be ({total}, C, h, w): one per image; got {tuple(latents.shape)}")
    if latents is not None and not bool(torch.isfinite(latents).all()):
        raise ValueError("latents hold NaN or infinite values")
