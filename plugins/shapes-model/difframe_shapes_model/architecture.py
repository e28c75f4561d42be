"""The built-in model's architecture: Stable Diffusion's three networks, sized for 64x64 flat shapes."""

from __future__ import annotations

from typing import Any

VAE = {
    "block_out_channels": (32, 64, 64, 64),  # four levels, as in Stable Diffusion: 64x64 pixels -> 8x8x4 latents
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 16,
    "sample_size": 64,
}
UNET = {
    "sample_size": 8,
    "block_out_channels": (64, 128),  # cross-attention at every level: 8x8 and 4x4
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "layers_per_block": 1,
    "norm_num_groups": 16,
    "attention_head_dim": 2,  # the number of heads, in the shared config's naming: 2 heads of 32 / 64 channels
    "cross_attention_dim": 64,
}
TEXT = {  # transformers.CLIPTextConfig; the vocabulary is the real CLIP one
    "vocab_size": 49408,
    "hidden_size": 64,
    "intermediate_size": 256,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "max_position_embeddings": 77,
    "projection_dim": 64,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 49407,
}
SCHEDULE = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    # read by DDIM / DDPM / PNDM when a user swaps them in: the latents have unit variance, so no [-1, 1] clipping
    "clip_sample": False,
    "set_alpha_to_one": False,
}

# Much smaller networks of the same shape, for tests of the training loop.
TINY_VAE = {**VAE, "block_out_channels": (8, 16, 16, 16), "norm_num_groups": 8}
TINY_UNET = {**UNET, "block_out_channels": (16, 32), "norm_num_groups": 8, "cross_attention_dim": 16}
TINY_TEXT = {
    **TEXT,
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "projection_dim": 16,
}


def configs(tiny: bool) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    return (TINY_VAE, TINY_UNET, TINY_TEXT) if tiny else (VAE, UNET, TEXT)
