"""Registrations of difframe-clip. Factories are strings: listing plugins never imports torch or transformers."""

from __future__ import annotations

from difframe import hookimpl

REQUIRES = {"packages": ("transformers",)}


@hookimpl
def register_model(register) -> None:
    register(
        name="clip-text-model",
        factory="difframe_clip.models:CLIPTextModelLoader",
        role="text_encoder",
        loads=[("transformers", "CLIPTextModel")],
        requires=REQUIRES,
        description="CLIP text transformer (transformers), Stable Diffusion's text_encoder/",
    )
    register(
        name="clip-tokenizer",
        factory="difframe_clip.models:CLIPTokenizerLoader",
        role="tokenizer",
        loads=[("transformers", "CLIPTokenizer"), ("transformers", "CLIPTokenizerFast")],
        requires=REQUIRES,
        description="CLIP byte-level BPE tokenizer (transformers), a model's tokenizer/",
    )
    register(
        name="clip-vision-model",
        factory="difframe_clip.models:CLIPVisionModelLoader",
        role="image_encoder",
        loads=[("transformers", "CLIPVisionModelWithProjection")],
        requires=REQUIRES,
        description="CLIP image transformer with projection (transformers), IP-Adapter's image_encoder/",
    )
    register(
        name="clip-image-processor",
        factory="difframe_clip.models:CLIPImageProcessor",
        role="feature_extractor",
        loads=[
            ("transformers", "CLIPImageProcessor"),
            ("transformers", "CLIPImageProcessorPil"),  # what the reference saves where torchvision is missing
            ("transformers", "CLIPImageProcessorFast"),
            ("transformers", "CLIPFeatureExtractor"),  # the old name, in early SD model_index.json files
        ],
        requires=REQUIRES,
        description="CLIP image preprocessing (resize, crop, normalize), a model's feature_extractor/",
    )


@hookimpl
def register_conditioner(register) -> None:
    register(
        name="clip-text",
        factory="difframe_clip.conditioner:CLIPTextConditioner",
        modality="text",
        requires=REQUIRES,
        description="prompts -> CLIP text embeddings: long prompts in 75-token chunks, clip_skip, negative prompts",
    )
