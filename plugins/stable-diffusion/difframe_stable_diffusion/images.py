"""Init images and masks -> tensors: PIL images, (H, W, C) / (N, H, W, C) arrays or (C, H, W) / (N, C, H, W)
tensors with values in [0, 1]."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def as_image_list(image: Any, name: str) -> list[Any]:
    """One image or a batch -> a list of single images (PIL, (H, W, C) arrays or (C, H, W) tensors)."""
    from PIL import Image

    if image is None:
        raise ValueError(f"{name} is required")
    if isinstance(image, (list, tuple)):
        if not image:
            raise ValueError(f"{name} is an empty list")
        return [single for item in image for single in as_image_list(item, name)]
    if isinstance(image, Image.Image):
        return [image]
    if isinstance(image, np.ndarray):
        return list(image) if image.ndim == 4 else [image]
    if isinstance(image, torch.Tensor):
        return list(image) if image.ndim == 4 else [image]
    raise TypeError(f"{name} must be a PIL image, a numpy array, a torch tensor or a list of them, not {type(image)}")


def image_size(image: Any) -> tuple[int, int]:
    """(height, width) of one image."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.height, image.width
    if isinstance(image, np.ndarray):
        return (image.shape[0], image.shape[1]) if image.ndim == 3 else tuple(image.shape[-2:])
    return tuple(image.shape[-2:])


def _to_tensor(image: Any, height: int, width: int, mode: str) -> torch.Tensor:
    """One image -> (C, H, W) float32 in [0, 1], resized (Lanczos) to height x width if needed."""
    from PIL import Image

    if isinstance(image, Image.Image):
        if image.size != (width, height):
            image = image.resize((width, height), resample=Image.Resampling.LANCZOS)
        image = image.convert(mode)
        array = np.array(image).astype(np.float32) / 255.0
        array = array[..., None] if array.ndim == 2 else array
        return torch.from_numpy(array).permute(2, 0, 1)
    if isinstance(image, np.ndarray):
        array = image.astype(np.float32)
        array = array[..., None] if array.ndim == 2 else array
        tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)
    else:
        tensor = image.detach().float().cpu()
        tensor = tensor[None] if tensor.ndim == 2 else tensor
    if tuple(tensor.shape[-2:]) != (height, width):
        tensor = torch.nn.functional.interpolate(tensor[None], size=(height, width), mode="bilinear")[0]
    channels = 3 if mode == "RGB" else 1
    if tensor.shape[0] != channels:
        if channels == 1:
            tensor = tensor[:3].mean(dim=0, keepdim=True)
        elif tensor.shape[0] == 1:
            tensor = tensor.expand(3, -1, -1)
        else:
            tensor = tensor[:3]
    if tensor.min() < 0 or tensor.max() > 1:
        raise ValueError("image and mask arrays and tensors must hold values in [0, 1]")
    return tensor


def preprocess_images(images: list[Any], height: int, width: int) -> torch.Tensor:
    """-> (N, 3, H, W) in [-1, 1], as the VAE expects."""
    return torch.stack([_to_tensor(image, height, width, "RGB") for image in images]) * 2.0 - 1.0


def preprocess_masks(masks: list[Any], height: int, width: int) -> torch.Tensor:
    """-> (N, 1, H, W) of 0 (keep) and 1 (repaint): grayscale, thresholded at 0.5."""
    tensor = torch.stack([_to_tensor(mask, height, width, "L") for mask in masks])
    return (tensor >= 0.5).to(tensor.dtype)


def default_size(image: Any, multiple: int) -> tuple[int, int]:
    """The image's size rounded down to a multiple of ``multiple``."""
    height, width = image_size(image)
    return (height // multiple) * multiple, (width // multiple) * multiple
