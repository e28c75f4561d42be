"""difframe-cuda-kernels: Triton kernels for the UNet's and VAE's element-wise hot paths on NVIDIA GPUs."""

__version__ = "0.1.0"
