"""difframe-xformers-attn: xformers' memory-efficient attention as an attention backend."""

__version__ = "0.1.0"
