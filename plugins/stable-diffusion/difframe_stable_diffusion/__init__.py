"""Stable Diffusion pipelines for difframe: text-to-image, image-to-image and inpainting.

Importing this package does not import torch; the pipeline classes live in their own modules.
"""

__version__ = "0.1.0"
