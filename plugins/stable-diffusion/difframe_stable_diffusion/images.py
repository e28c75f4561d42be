"""Init images and masks -> tensors: PIL images (8-bit, and 16-bit / 32-bit modes rescaled), (H, W, C) /
(N, H, W, C) arrays or (C, H, W) / (N, C, H, W) tensors: floats in [0, 1], uint8 over 0-255, uint16 over 0-65535.
NaN or infinite values are refused."""

from __future__ import annotations

import warnings
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


HIGH_DEPTH_MODES = {"I;16": 65535, "I;16B": 65535, "I;16L": 65535, "I;16N": 65535, "I": 65535, "F": 1.0}


def _scaled_array(array: np.ndarray, what: str) -> np.ndarray:
    """An array in [0, 1] as float32: integers over their type's full range (uint8 / 255, uint16 / 65535), bools as
    0 and 1, floats as they are."""
    if array.dtype == np.bool_:
        return array.astype(np.float32)
    if array.dtype in (np.uint8, np.uint16):
        top = np.iinfo(array.dtype).max
        if array.size and array.max() == 1:
            warnings.warn(
                f"{what} is {array.dtype} holding only 0 and 1, read on 0-{top} (nearly black); pass a bool or float "
                "array for 0/1 values",
                UserWarning,
                stacklevel=5,
            )
        return array.astype(np.float32) / top
    if np.issubdtype(array.dtype, np.floating):
        return array.astype(np.float32)
    raise TypeError(f"{what} has dtype {array.dtype}; pass uint8, uint16, bool or float values in [0, 1]")


def _pil_array(image: Any, mode: str) -> np.ndarray:
    """A PIL image -> (H, W, C) float32 in [0, 1]; 16-bit and 32-bit modes rescaled rather than clipped at 255."""
    top = HIGH_DEPTH_MODES.get(image.mode)
    if top is None:
        array = np.asarray(image.convert(mode), dtype=np.float32) / 255.0
    else:
        array = np.asarray(image, dtype=np.float32)
        if top == 65535 and array.size and (array.min() < 0 or array.max() > 65535):
            raise ValueError(f"a mode {image.mode!r} image must hold values 0 to 65535 (16-bit), got {array.max():g}")
        array = array / top
    return array[..., None] if array.ndim == 2 else array


def _to_tensor(image: Any, height: int, width: int, mode: str, what: str) -> torch.Tensor:
    """One image -> (C, H, W) float32 in [0, 1], resized to height x width if needed (Lanczos for 8-bit PIL
    images, bilinear otherwise)."""
    from PIL import Image

    if isinstance(image, Image.Image) and image.mode not in HIGH_DEPTH_MODES:
        if image.size != (width, height):
            image = image.resize((width, height), resample=Image.Resampling.LANCZOS)
        return torch.from_numpy(_pil_array(image, mode).copy()).permute(2, 0, 1)
    if isinstance(image, Image.Image):
        tensor = torch.from_numpy(_pil_array(image, mode).copy()).permute(2, 0, 1)
    elif isinstance(image, np.ndarray):
        array = _scaled_array(image, what)
        array = array[..., None] if array.ndim == 2 else array
        tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)
    else:
        tensor = image.detach().cpu()
        if tensor.dtype in (torch.uint8, getattr(torch, "uint16", torch.uint8), torch.bool):
            tensor = torch.from_numpy(_scaled_array(tensor.numpy(), what))
        elif not tensor.is_floating_point():
            raise TypeError(f"{what} has dtype {tensor.dtype}; pass uint8, uint16, bool or float values in [0, 1]")
        tensor = tensor.float()
        tensor = tensor[None] if tensor.ndim == 2 else tensor
    if not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise ValueError(f"{what} holds {bad} NaN or infinite value(s); pass finite values in [0, 1]")
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
        raise ValueError(
            f"{what} holds values from {float(tensor.min()):g} to {float(tensor.max()):g}; image and mask arrays "
            "and tensors must hold values in [0, 1] (or be uint8 / uint16)"
        )
    return tensor


def preprocess_images(images: list[Any], height: int, width: int) -> torch.Tensor:
    """-> (N, 3, H, W) in [-1, 1], as the VAE expects."""
    return torch.stack([_to_tensor(image, height, width, "RGB", "image") for image in images]) * 2.0 - 1.0


def preprocess_masks(masks: list[Any], height: int, width: int) -> torch.Tensor:
    """-> (N, 1, H, W) of 0 (keep) and 1 (repaint): grayscale, thresholded at 0.5."""
    tensor = torch.stack([_to_tensor(mask, height, width, "L", "mask_image") for mask in masks])
    return (tensor >= 0.5).to(tensor.dtype)


def default_size(image: Any, multiple: int) -> tuple[int, int]:
    """The image's size rounded down to a multiple of ``multiple``."""
    height, width = image_size(image)
    if height < multiple or width < multiple:
        raise ValueError(
            f"the init image is {width}x{height}, smaller than the model's size step {multiple}; pass a larger image, "
            "or height and width"
        )
    return (height // multiple) * multiple, (width // multiple) * multiple
