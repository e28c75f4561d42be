"""The web UI's inpainting options (an img2img request with a ``mask``) over difframe's inpainting pipeline.

The mask is made binary (its alpha channel if it has one that is not opaque everywhere, else its grey level,
threshold 128), optionally inverted, then blurred (``mask_blur``). With ``inpaint_full_res`` ("only masked") the
region around the mask, plus ``inpaint_full_res_padding`` and widened to the request's aspect ratio, is cut out and
generated at width x height, then scaled back and pasted in; otherwise the whole image is generated at width x
height. Either way the result is laid over the init image through the blurred mask (doubled, so that everything
the pipeline repaints is taken whole and only the blur's outer half blends): pixels outside the mask stay the init
image's. ``inpainting_fill`` 1 starts from the init image, 0 first fills the masked part with the colours around
it; 2 and 3 (latent noise, latent nothing) are refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageChops, ImageFilter, ImageOps

from .errors import FieldError
from .images import fit_image

FILL, ORIGINAL = 0, 1


@dataclass(frozen=True)
class InpaintPlan:
    """What the pipeline gets (``image`` and ``mask``, width x height) and how its result goes back in place."""

    image: Image.Image
    mask: Image.Image
    original: Image.Image  # the init image the result is laid over
    overlay: Image.Image  # "L", the size of ``original``: how much of the generated image each pixel takes
    box: tuple[int, int, int, int] | None  # where the generated image goes in ``original`` ("only masked")

    def finish(self, generated: Image.Image) -> Image.Image:
        placed = generated.convert("RGB")
        if self.box is not None:
            x1, y1, x2, y2 = self.box
            region = placed.resize((x2 - x1, y2 - y1), resample=Image.Resampling.LANCZOS)
            placed = self.original.copy()
            placed.paste(region, (x1, y1))
        return Image.composite(placed, self.original, self.overlay)


def binary_mask(mask: Image.Image, invert: bool) -> Image.Image:
    if mask.mode in ("RGBA", "LA", "PA") and mask.getchannel("A").getextrema() != (255, 255):
        grey = mask.getchannel("A")
    else:
        grey = mask.convert("L")
    binary = grey.point(lambda v: 255 if v > 128 else 0)
    return ImageOps.invert(binary) if invert else binary


def fill_masked(image: Image.Image, mask: Image.Image) -> Image.Image:
    """``image`` with its masked pixels replaced by the colours around them: weighted means of the kept pixels over
    shrinking neighbourhoods, the nearest that has kept pixels winning."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    keep = np.asarray(mask, dtype=np.float32) < 128
    if not keep.any():
        return image  # nothing around the mask to take colours from: the image as it is
    from scipy.ndimage import gaussian_filter

    weights = keep.astype(np.float32)
    filled = pixels.copy()
    filled[~keep] = pixels[keep].mean(axis=0)
    for sigma in (64, 16, 4, 1):
        total = gaussian_filter(weights, sigma)
        known = total > 1e-3
        for channel in range(3):
            spread = gaussian_filter(pixels[..., channel] * weights, sigma)
            estimate = np.where(known, spread / np.maximum(total, 1e-3), filled[..., channel])
            filled[..., channel] = np.where(keep, pixels[..., channel], estimate)
    return Image.fromarray(np.clip(filled + 0.5, 0, 255).astype(np.uint8))


def crop_box(mask: Image.Image, padding: int, width: int, height: int) -> tuple[int, int, int, int]:
    """The mask's bounding box plus ``padding``, widened to the aspect ratio width:height, inside the image."""
    x1, y1, x2, y2 = mask.getbbox()  # type: ignore[misc]  # the caller refuses an empty mask
    x1, y1 = max(x1 - padding, 0), max(y1 - padding, 0)
    x2, y2 = min(x2 + padding, mask.width), min(y2 + padding, mask.height)
    w, h = x2 - x1, y2 - y1
    if w / h < width / height:
        w = min(round(h * width / height), mask.width)
    else:
        h = min(round(w * height / width), mask.height)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    left = int(min(max(round(cx - w / 2), 0), mask.width - w))
    top = int(min(max(round(cy - h / 2), 0), mask.height - h))
    return left, top, left + w, top + h


def plan(
    image: Image.Image,
    mask: Image.Image,
    *,
    width: int,
    height: int,
    resize_mode: int,
    blur: tuple[int, int],
    fill: int,
    full_res: bool,
    padding: int,
    invert: bool,
) -> InpaintPlan:
    if fill not in (FILL, ORIGINAL):
        raise FieldError(
            "inpainting_fill",
            f"{fill!r} is not available; use 0 (fill: the masked part starts from the colours around it) or 1 "
            "(original: it starts from the init image)",
        )
    if min(blur) < 0 or padding < 0:
        field = "inpaint_full_res_padding" if padding < 0 else "mask_blur"
        raise FieldError(field, "must be 0 or more")
    if mask.size != image.size:
        raise FieldError(
            "mask", f"the mask is {mask.width}x{mask.height}, the init image {image.width}x{image.height}: use one size"
        )
    binary = binary_mask(mask, invert)
    if binary.getbbox() is None:
        raise FieldError("mask", "the mask is black everywhere (after inpainting_mask_invert): nothing to repaint")
    soft = binary.filter(ImageFilter.GaussianBlur(blur)) if max(blur) > 0 else binary
    box = None
    if full_res:
        box = crop_box(soft, padding, width, height)
        original = image
        work_image = image.crop(box).resize((width, height), Image.Resampling.LANCZOS)
        work_mask = soft.crop(box).resize((width, height), Image.Resampling.LANCZOS)
    else:
        original = fit_image(image, width, height, resize_mode).resize((width, height), Image.Resampling.LANCZOS)
        soft = fit_image(soft, width, height, resize_mode).resize((width, height), Image.Resampling.LANCZOS)
        work_image, work_mask = original, soft
    if fill == FILL:
        work_image = fill_masked(work_image, work_mask)
    overlay = ImageChops.add(soft, soft)  # doubled: what the pipeline repaints (>= half) is taken whole
    return InpaintPlan(image=work_image, mask=work_mask, original=original, overlay=overlay, box=box)
