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
            return image.convert("RGB")
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
