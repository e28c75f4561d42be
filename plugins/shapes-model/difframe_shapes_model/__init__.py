"""difframe's built-in model: Stable Diffusion's architecture, trained from scratch on drawn shapes."""

from pathlib import Path

WEIGHTS = Path(__file__).parent / "difframe-shapes"
