"""Images in and out of JSON: base64 PNG (with the "parameters" text chunk), optionally as a data URL."""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any

from PIL import Image, UnidentifiedImageError
from PIL.PngImagePlugin import PngInfo


class BadImage(ValueError):
    """An uploaded image that cannot be used; the message names the field."""


def decode_image(text: Any, field: str, max_pixels: int) -> Image.Image:
    """A base64 string (or data:image/...;base64, URL) -> an RGB PIL image, refusing what is not a usable image.

    URLs are refused: the server never fetches on a client's behalf.
    """
    return open_image(text, field, max_pixels).convert("RGB")


def open_image(text: Any, field: str, max_pixels: int) -> Image.Image:
    """As ``decode_image``, but the image as stored: its mode (alpha included) and its text chunks."""
    if not isinstance(text, str) or not text:
        raise BadImage(f"{field}: expected a base64-encoded image string")
    if text.startswith(("http://", "https://")):
        raise BadImage(f"{field}: image URLs are not fetched; send the image itself, base64-encoded")
    if text.startswith("data:"):
        header, _, text = text.partition(",")
        if not header.endswith(";base64"):
            raise BadImage(f"{field}: a data URL must be base64-encoded (data:image/png;base64,...)")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadImage(f"{field}: not valid base64") from None
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > max_pixels:
                raise BadImage(
                    f"{field}: the image is {image.width}x{image.height}; at most {max_pixels} pixels are accepted"
                )
            image.load()
            return image
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, SyntaxError):
        raise BadImage(f"{field}: the base64 data is not an image PIL can read (PNG, JPEG, WebP, ...)") from None


def encode_png(image: Image.Image, parameters: str | None = None) -> str:
    """A PIL image -> base64 PNG text, with the generation parameters in its "parameters" chunk."""
    info = None
    if parameters:
        info = PngInfo()
        info.add_text("parameters", parameters)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def fit_image(image: Image.Image, width: int, height: int, mode: int) -> Image.Image:
    """The init image brought to ``width`` x ``height`` as the web UI's resize modes do: 0 stretches it (the
    pipeline does that), 1 scales it to cover the size and cuts off the centred overflow, 2 scales it to fit inside
    and fills the margins by stretching the image's outermost rows or columns."""
    if mode == 0 or image.size == (width, height):
        return image
    scale = (max if mode == 1 else min)(width / image.width, height / image.height)
    inner = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    scaled = image.resize(inner, resample=Image.Resampling.LANCZOS)
    left, top = (width - inner[0]) // 2, (height - inner[1]) // 2
    if mode == 1:
        return scaled.crop((-left, -top, -left + width, -top + height))
    canvas = Image.new(image.mode, (width, height))
    canvas.paste(scaled, (left, top))
    w, h = inner
    if left > 0:  # margins at the sides: the first and last columns, stretched
        canvas.paste(scaled.crop((0, 0, 1, h)).resize((left, h)), (0, top))
        right = width - left - w
        canvas.paste(scaled.crop((w - 1, 0, w, h)).resize((right, h)), (left + w, top))
    if top > 0:  # margins above and below: the first and last rows, stretched
        canvas.paste(scaled.crop((0, 0, w, 1)).resize((w, top)), (left, 0))
        bottom = height - top - h
        canvas.paste(scaled.crop((0, h - 1, w, h)).resize((w, bottom)), (left, top + h))
    return canvas
