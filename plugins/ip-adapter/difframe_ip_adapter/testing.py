"""Test helpers: random IP-Adapter weights in the published layout, numbered by the reference library's UNet
(diffusers, test-only), and a tiny UNet config."""

from __future__ import annotations

import torch

SD1_TINY = dict(
    sample_size=16,
    block_out_channels=(32, 64),
    layers_per_block=2,
    cross_attention_dim=32,
    attention_head_dim=4,
    norm_num_groups=8,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
)
IMAGE_EMBED_DIM = 16  # the tiny image encoder's projection width
IMAGE_HIDDEN_DIM = 24  # its hidden width (Plus and full-face read hidden states)


def published_state(
    unet_config: dict,
    kind: str = "plain",
    seed: int = 0,
    embed_dim: int | None = None,
    queries: int = 4,
    plus_width: int = 64,
) -> dict[str, torch.Tensor]:
    """Random weights in the published layout (flat ``image_proj.*`` / ``ip_adapter.<n>.*`` keys) for a UNet of
    ``unet_config``: plain (ImageProjModel), plus (Resampler) or full (MLP)."""
    from diffusers import UNet2DConditionModel

    generator = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * 0.2

    cross = unet_config["cross_attention_dim"]
    state: dict[str, torch.Tensor] = {}
    if kind == "plain":
        embed = embed_dim or IMAGE_EMBED_DIM
        state |= {"image_proj.proj.weight": rand(4 * cross, embed), "image_proj.proj.bias": rand(4 * cross)}
        state |= {"image_proj.norm.weight": 1 + rand(cross), "image_proj.norm.bias": rand(cross)}
    elif kind == "full":
        embed = embed_dim or IMAGE_HIDDEN_DIM
        state |= {"image_proj.proj.0.weight": rand(embed, embed), "image_proj.proj.0.bias": rand(embed)}
        state |= {"image_proj.proj.2.weight": rand(cross, embed), "image_proj.proj.2.bias": rand(cross)}
        state |= {"image_proj.proj.3.weight": 1 + rand(cross), "image_proj.proj.3.bias": rand(cross)}
    else:  # plus: 64-channel heads (plus_width / 64 of them), depth 4 as the releases (the reference fixes it)
        embed, hidden = embed_dim or IMAGE_HIDDEN_DIM, plus_width
        state |= {"image_proj.latents": rand(1, queries, hidden)}
        state |= {"image_proj.proj_in.weight": rand(hidden, embed), "image_proj.proj_in.bias": rand(hidden)}
        state |= {"image_proj.proj_out.weight": rand(cross, hidden), "image_proj.proj_out.bias": rand(cross)}
        state |= {"image_proj.norm_out.weight": 1 + rand(cross), "image_proj.norm_out.bias": rand(cross)}
        for layer in range(4):
            p = f"image_proj.layers.{layer}"
            for norm in ("0.norm1", "0.norm2", "1.0"):
                state |= {f"{p}.{norm}.weight": 1 + rand(hidden), f"{p}.{norm}.bias": rand(hidden)}
            state |= {f"{p}.0.to_q.weight": rand(hidden, hidden), f"{p}.0.to_kv.weight": rand(2 * hidden, hidden)}
            state |= {f"{p}.0.to_out.weight": rand(hidden, hidden)}
            state |= {f"{p}.1.1.weight": rand(4 * hidden, hidden), f"{p}.1.3.weight": rand(hidden, 4 * hidden)}
    reference = UNet2DConditionModel(**unet_config)
    number = 1
    for _name, processor_module in _reference_cross_attention(reference):
        inner = processor_module.to_k.weight.shape[0]
        state[f"ip_adapter.{number}.to_k_ip.weight"] = rand(inner, cross)
        state[f"ip_adapter.{number}.to_v_ip.weight"] = rand(inner, cross)
        number += 2
    return state


def _reference_cross_attention(unet):
    modules = dict(unet.named_modules())
    for key in unet.attn_processors:
        name = key.removesuffix(".processor")
        if name.endswith("attn2"):
            yield name, modules[name]


VISION_TINY = dict(
    hidden_size=IMAGE_HIDDEN_DIM,
    projection_dim=IMAGE_EMBED_DIM,
    intermediate_size=37,
    num_attention_heads=4,
    num_hidden_layers=2,
    image_size=32,
    patch_size=8,
)


def write_adapter_folder(
    folder, unet_config: dict, kinds: tuple[str, ...] = ("plain",), seed: int = 0, vision: dict | None = None
):
    """An adapter repository as IP-Adapter publishes it: models/ip-adapter-<kind>.safetensors and
    models/image_encoder (a CLIPVisionModelWithProjection, random weights)."""
    from pathlib import Path

    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    vision = vision or VISION_TINY
    models = Path(folder) / "models"
    models.mkdir(parents=True, exist_ok=True)
    for index, kind in enumerate(kinds):
        # plain reads the encoder's projected embedding; Plus and full-face read its hidden states
        embed = vision["projection_dim"] if kind == "plain" else vision["hidden_size"]
        state = published_state(unet_config, kind, seed + index, embed_dim=embed)
        save_file(state, models / f"ip-adapter-{kind}.safetensors")
    torch.manual_seed(seed)
    CLIPVisionModelWithProjection(CLIPVisionConfig(**vision)).eval().save_pretrained(models / "image_encoder")
    return Path(folder)


def colour_image(size: int = 32, seed: int = 0):
    """A deterministic RGB PIL image with structure."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    array = np.clip(np.stack([x, y, (x + y) / 2], axis=-1) * 0.8 + rng.random((size, size, 3)) * 0.2, 0, 1)
    return Image.fromarray((array * 255).astype("uint8"))
