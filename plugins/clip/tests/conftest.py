"""Shared fixtures: a real CLIP tokenizer (from CLIP's BPE file), a tiny random CLIPTextModel, both saved to disk."""

from __future__ import annotations

import types

import pytest
import torch

TINY_TEXT = {
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "projection_dim": 16,
    "vocab_size": 49408,
    "max_position_embeddings": 77,
}


@pytest.fixture(scope="session")
def model_root(tmp_path_factory):
    """A model folder with tokenizer/ and text_encoder/, as a Stable Diffusion model has them."""
    import transformers
    from difframe_clip.vocab import write_tokenizer_folder

    root = tmp_path_factory.mktemp("clip-model")
    write_tokenizer_folder(root / "tokenizer")
    torch.manual_seed(0)
    transformers.CLIPTextModel(transformers.CLIPTextConfig(**TINY_TEXT)).save_pretrained(root / "text_encoder")
    return root


@pytest.fixture(scope="session")
def reference_pipeline(model_root):
    """diffusers' StableDiffusionPipeline holding only what encode_prompt needs."""
    import transformers
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    return make_reference_pipeline(
        transformers.CLIPTokenizer.from_pretrained(model_root / "tokenizer"),
        transformers.CLIPTextModel.from_pretrained(model_root / "text_encoder").eval(),
        StableDiffusionPipeline,
        DDIMScheduler,
    )


def make_reference_pipeline(tokenizer, text_encoder, pipeline_class, scheduler_class):
    # diffusers 0.42 reads text_model.final_layer_norm for clip_skip; transformers 5 keeps final_layer_norm on the
    # model itself. Point the old name at the same module so the reference computes what it always did.
    if not hasattr(text_encoder, "text_model"):
        text_encoder.text_model = types.SimpleNamespace(final_layer_norm=text_encoder.final_layer_norm)
    return pipeline_class(
        vae=None,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=None,
        scheduler=scheduler_class(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


@pytest.fixture(scope="session")
def helpers():
    return types.SimpleNamespace(make_reference_pipeline=make_reference_pipeline, tiny_text=dict(TINY_TEXT))


@pytest.fixture(scope="module")
def conditioner(model_root):
    from difframe_clip import CLIPTextConditioner

    return CLIPTextConditioner.from_pretrained(model_root)
