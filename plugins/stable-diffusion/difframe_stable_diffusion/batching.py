"""Batch planning: prompts x images-per-prompt, one seed per image, and chunks that fit a memory budget.

Every image carries its own prompt, negative prompt and seed, so image i is the same whether it is made alone,
in a batch, or in any chunk of a batch. No torch import at module level.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .request import MAX_SEED, check_seed


@dataclass(frozen=True)
class ImageJob:
    """One image of a batch: which prompt it belongs to and the seed its noise comes from."""

    index: int
    prompt_index: int
    seed: int | None


def as_prompt_list(value: str | Sequence[str] | None, name: str) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, Sequence) and all(isinstance(v, str) for v in value):
        if not value:
            raise ValueError(f"{name} is an empty list")
        return list(value)
    raise TypeError(f"{name} must be a string or a list of strings, got {type(value).__name__}")


def plan_seeds(total: int, seed: int | Sequence[int] | None = None, seeds: Sequence[int] | None = None) -> list[int]:
    """One seed per image. ``seed=s`` gives s, s+1, s+2, ... (the web UIs' convention); ``seeds`` lists them all.

    Without either, a random base seed is drawn, so every image still has a seed that reproduces it. Seeds are
    0 to MAX_SEED (what the noise generator keeps); s + i wraps past MAX_SEED to 0. The seeds returned are the ones
    the noise comes from, and are what the images' parameters record, whichever way they were given.
    """
    if seed is not None and seeds is not None:
        raise ValueError("pass seed (one base seed) or seeds (one per image), not both")
    if isinstance(seed, Sequence) and not isinstance(seed, (str, bytes)):
        seeds, seed = seed, None
    if seeds is not None:
        if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Sequence):
            raise ValueError(f"seeds must be a list of integers, got {seeds!r}")
        seeds = list(seeds)
        if len(seeds) != total:
            raise ValueError(
                f"got {len(seeds)} seeds for {total} images (prompts x num_images_per_prompt); pass one seed per "
                "image, or a single seed=s for s, s+1, ..."
            )
        return [check_seed(value) for value in seeds]
    base = random.randrange(MAX_SEED + 1) if seed is None else check_seed(seed)
    return [(base + i) % (MAX_SEED + 1) for i in range(total)]


def plan_jobs(num_prompts: int, num_images_per_prompt: int, seeds: Sequence[int | None]) -> list[ImageJob]:
    """Images in the reference library's order: all images of prompt 0, then of prompt 1, ..."""
    return [
        ImageJob(index=i, prompt_index=i // num_images_per_prompt, seed=seeds[i])
        for i in range(num_prompts * num_images_per_prompt)
    ]


def chunk_ranges(total: int, chunk_size: int) -> list[tuple[int, int]]:
    chunk_size = max(1, int(chunk_size))
    return [(start, min(start + chunk_size, total)) for start in range(0, total, chunk_size)]


def chunk_size_for(total: int, per_image_bytes: int, budget_bytes: int | None) -> int:
    """How many images run together: as many as fit in the budget (at least one, at most all)."""
    if budget_bytes is None or per_image_bytes <= 0:
        return max(total, 1)
    return max(1, min(total, budget_bytes // per_image_bytes))


def parse_bytes(value: int | float | str | None) -> int | None:
    """8_000_000_000, '8GB', '512 MiB' -> bytes; None -> None."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value <= 0:
            raise ValueError(f"memory budget must be positive, got {value}")
        return int(value)
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)I?B?\s*", str(value).upper())
    if not match:
        raise ValueError(f"memory budget must be bytes or like '8GB' / '512MB', got {value!r}")
    result = int(float(match.group(1)) * 1024 ** " KMGT".index(match.group(2) or " "))
    if result <= 0:
        raise ValueError(f"memory budget must be positive, got {value!r}")
    return result


def available_memory(device: Any) -> int | None:
    """Free memory on ``device`` in bytes: the accelerator's free memory, or the host's available RAM."""
    import torch

    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type == "mps" and hasattr(torch, "mps"):
        try:
            return int(torch.mps.recommended_max_memory() - torch.mps.current_allocated_memory())
        except Exception:
            return None
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


AUTO_BUDGET_FRACTION = 0.8  # of the free memory, when no budget is set


def split_where_changes(ranges: list[tuple[int, int]], keys: list[Any]) -> list[tuple[int, int]]:
    """Split ranges so that every range holds images with one key (here: the text embedding's length)."""
    result = []
    for start, stop in ranges:
        begin = start
        for i in range(start + 1, stop):
            if keys[i] != keys[i - 1]:
                result.append((begin, i))
                begin = i
        result.append((begin, stop))
    return result


class SizesAndMemoryMixin:
    """Image sizes a model takes, the memory a call needs, and how many images run together."""

    @property
    def vae_scale_factor(self) -> int:
        factor = getattr(self.vae, "scale_factor", None)
        if isinstance(factor, int):
            return factor
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def size_multiple(self) -> int:
        """Height and width must be multiples of this: the VAE factor times the UNet's downsampling."""
        return self.vae_scale_factor * 2 ** int(getattr(self.unet, "num_upsamplers", 0))

    def default_size(self) -> int:
        size = self.unet.config.sample_size
        size = size if isinstance(size, int) else size[0]
        return int(size) * self.vae_scale_factor

    def check_size(self, height: int, width: int) -> None:
        from .request import check_size

        multiple = self.size_multiple
        why = f"the VAE's factor {self.vae_scale_factor}"
        if multiple != self.vae_scale_factor:
            why += f" times the UNet's downsampling {multiple // self.vae_scale_factor}"
        check_size(height, width, multiple, why)

    def _itemsize(self) -> int:
        import torch

        return torch.empty((), dtype=self.unet.dtype).element_size()

    def check_memory(self, height: int, width: int, total: int = 1) -> None:
        """Refuse up front a size whose image alone cannot fit in the device's free memory, or a batch whose
        images (all held until the call returns) cannot."""
        from .request import check_memory, minimum_image_bytes

        channels = self.unet.config.block_out_channels[0]
        needed = minimum_image_bytes(height, width, self.vae_scale_factor, channels, self._itemsize())
        free = available_memory(self.execution_device)
        check_memory(needed, free, height, width, self.execution_device)
        check_memory(total * height * width * 3 * 4, free, height, width, self.execution_device, images=total)

    def estimate_image_bytes(self, height: int, width: int, guided: bool) -> int:
        """A rough peak working memory per image (activations, not weights), for splitting batches into chunks."""
        itemsize = self._itemsize()
        tokens = (height // self.vae_scale_factor) * (width // self.vae_scale_factor)
        channels = self.unet.config.block_out_channels[0]
        unet = (2 if guided else 1) * tokens * channels * itemsize * 40
        vae_channels = self.vae.config.block_out_channels[0]
        vae = 0 if getattr(self.vae, "use_slicing", False) else height * width * vae_channels * itemsize * 6
        return int(max(unet, vae))

    def chunk_size(self, total: int, height: int, width: int, guided: bool, budget: int | None) -> int:
        """Images per chunk: those that fit the budget (-1: all; None: a share of the free memory)."""
        if budget == -1:
            return total
        if budget is None:
            free = available_memory(self.execution_device)
            budget = None if free is None else int(free * AUTO_BUDGET_FRACTION)
        return chunk_size_for(total, self.estimate_image_bytes(height, width, guided), budget)
