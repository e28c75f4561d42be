"""Test helpers: the tiny SD 1.x-style UNet config that this plugin's tests and the pipelines' tests build (two
blocks, 32 and 64 channels, cross-attention width 32: random weights that run in milliseconds)."""

from __future__ import annotations

UNET_TINY = dict(
    sample_size=16,
    block_out_channels=(32, 64),
    layers_per_block=2,
    cross_attention_dim=32,
    attention_head_dim=4,
    norm_num_groups=8,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
)
