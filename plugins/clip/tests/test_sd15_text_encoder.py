"""The full Stable Diffusion 1.5 text encoder architecture (CLIP ViT-L/14 text tower, random weights)."""

from __future__ import annotations

import gc

import pytest
import torch
from difframe_clip import CLIPTextConditioner

pytestmark = pytest.mark.slow

SD15_TEXT_ENCODER = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
    "vocab_size": 49408,
    "max_position_embeddings": 77,
}


def test_sd15_text_encoder_matches_reference_encode_prompt(tmp_path, helpers):
    import transformers
    from difframe_clip.vocab import write_tokenizer_folder
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    write_tokenizer_folder(tmp_path / "tokenizer")
    torch.manual_seed(0)
    reference_encoder = transformers.CLIPTextModel(transformers.CLIPTextConfig(**SD15_TEXT_ENCODER)).eval()
    reference_encoder.save_pretrained(tmp_path / "text_encoder")
    reference = helpers.make_reference_pipeline(
        transformers.CLIPTokenizer.from_pretrained(tmp_path / "tokenizer"),
        reference_encoder,
        StableDiffusionPipeline,
        DDIMScheduler,
    )
    conditioner = CLIPTextConditioner.from_pretrained(tmp_path)
    prompts = ["a photo of an astronaut riding a horse on mars", "a watercolor fox"]
    for clip_skip in (None, 2):
        expected, expected_negative = reference.encode_prompt(
            prompts, "cpu", 1, True, ["blurry"] * 2, clip_skip=clip_skip
        )
        positive, negative = conditioner.encode_pair(prompts, "blurry", clip_skip, negative_clip_skip=None)
        assert positive.shape == (2, 77, 768)
        assert (positive - expected).abs().max() < 1e-4
        assert (negative - expected_negative).abs().max() < 1e-4
    del reference, reference_encoder, conditioner
    gc.collect()
