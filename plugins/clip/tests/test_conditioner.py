"""CLIPTextConditioner against diffusers' StableDiffusionPipeline.encode_prompt, and its long-prompt chunking."""

from __future__ import annotations

import pytest
import torch
from difframe_clip import CLIPTextConditioner

PROMPTS = ["a photo of a cat", "a watercolor fox in the snow, highly detailed"]
LONG = ", ".join(f"word{i}" for i in range(50))  # 150 to 225 tokens: three chunks


def encode_prompt(pipeline, prompts, negatives=None, clip_skip=None):
    return pipeline.encode_prompt(prompts, "cpu", 1, True, negatives, clip_skip=clip_skip)


@pytest.mark.parametrize("clip_skip", [None, 1, 2])
def test_encode_equals_reference_encode_prompt(conditioner, reference_pipeline, clip_skip):
    expected, expected_negative = encode_prompt(reference_pipeline, PROMPTS, ["", "blurry"], clip_skip)
    embeddings = conditioner.encode(PROMPTS, clip_skip=clip_skip)
    assert embeddings.shape == (2, 77, 32)
    assert torch.equal(embeddings, expected)
    positive, negative = conditioner.encode_pair(PROMPTS, ["", "blurry"], clip_skip, negative_clip_skip=None)
    assert torch.equal(positive, expected) and torch.equal(negative, expected_negative)


def test_clip_skip_changes_the_output_and_zero_is_none(conditioner):
    last = conditioner.encode(PROMPTS)
    assert torch.equal(conditioner.encode(PROMPTS, clip_skip=0), last)
    assert not torch.allclose(conditioner.encode(PROMPTS, clip_skip=1), last)


def test_negatives_use_the_same_clip_skip_by_default(conditioner):
    _, negative = conditioner.encode_pair(PROMPTS, "blurry", clip_skip=1)
    assert torch.equal(negative, conditioner.encode(["blurry", "blurry"], clip_skip=1))


def test_long_prompt_is_encoded_in_chunks(model_root):
    conditioner = CLIPTextConditioner.from_pretrained(model_root, comma_backtrack=0)  # cuts at 75 (see comma tests)
    tokens = conditioner.tokenizer(LONG, add_special_tokens=False).input_ids
    assert 150 < len(tokens) <= 225
    ids = conditioner.tokenize(LONG)
    assert ids.shape == (1, 3, 77)
    for chunk, start in zip(ids[0], (0, 75, 150)):
        part = tokens[start : start + 75]
        assert chunk.tolist() == [49406, *part, 49407] + [49407] * (75 - len(part))
    embeddings = conditioner.encode(LONG)
    assert embeddings.shape == (1, 3 * 77, 32)
    with torch.no_grad():
        for i in range(3):  # each chunk on its own through the text encoder
            alone = conditioner.text_encoder(ids[:, i]).last_hidden_state
            assert torch.allclose(embeddings[:, 77 * i : 77 * (i + 1)], alone, atol=1e-6)


def test_truncate_mode_equals_reference_on_long_prompt(model_root, reference_pipeline):
    truncating = CLIPTextConditioner.from_pretrained(model_root, long_prompts="truncate")
    expected, _ = encode_prompt(reference_pipeline, [LONG])
    assert torch.equal(truncating.encode(LONG), expected)


def test_max_chunks_caps_long_prompts(model_root):
    capped = CLIPTextConditioner.from_pretrained(model_root, max_chunks=2)
    assert capped.encode(LONG).shape == (1, 154, 32)


def test_batch_pads_to_the_longest_prompt_with_empty_chunks(conditioner, reference_pipeline):
    embeddings = conditioner.encode(["a cat", LONG])
    assert embeddings.shape == (2, 3 * 77, 32)
    expected_cat, _ = encode_prompt(reference_pipeline, ["a cat"])
    expected_empty, _ = encode_prompt(reference_pipeline, [""])
    assert torch.allclose(embeddings[:1, :77], expected_cat, atol=1e-6)
    assert torch.allclose(embeddings[:1, 77:154], expected_empty, atol=1e-6)
    assert torch.allclose(embeddings[1:], conditioner.encode(LONG), atol=1e-6)


def test_encode_pair_gives_equal_lengths(conditioner):
    positive, negative = conditioner.encode_pair(LONG, "ugly")
    assert positive.shape == negative.shape == (1, 3 * 77, 32)
    positive, negative = conditioner.encode_pair(["a cat", "a dog"], [LONG, None or ""])
    assert positive.shape == negative.shape == (2, 3 * 77, 32)
    positive, negative = conditioner.encode_pair("a cat")  # no negative: the empty prompt
    assert torch.equal(negative, conditioner.encode(""))


def test_bad_arguments_are_clear_errors(conditioner, model_root):
    with pytest.raises(ValueError, match="clip_skip must be an integer from 0 to 3"):
        conditioner.encode("a cat", clip_skip=4)
    with pytest.raises(ValueError, match="2 negative prompts for 1 prompts"):
        conditioner.encode_pair(["a cat"], ["x", "y"])
    with pytest.raises(TypeError, match="prompts must be"):
        conditioner.encode([])
    with pytest.raises(ValueError, match="needs 3 chunks"):
        conditioner.tokenize(LONG, chunks=2)
    with pytest.raises(ValueError, match="long_prompts"):
        CLIPTextConditioner.from_pretrained(model_root, long_prompts="drop")


def test_attention_mask_models_get_a_mask(model_root, tmp_path, helpers):
    """A text encoder whose config sets use_attention_mask gets the padding masked, as the reference does it."""
    import transformers
    from difframe_clip import CLIPTextModelLoader
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    encoder = CLIPTextModelLoader.from_pretrained(model_root, subfolder="text_encoder")
    encoder.config.use_attention_mask = True
    tokenizer = transformers.CLIPTokenizer.from_pretrained(model_root / "tokenizer")
    conditioner = CLIPTextConditioner(tokenizer, encoder)
    reference = helpers.make_reference_pipeline(tokenizer, encoder, StableDiffusionPipeline, DDIMScheduler)
    expected, _ = encode_prompt(reference, PROMPTS)
    assert torch.equal(conditioner.encode(PROMPTS), expected)


def test_fp16_and_bf16(model_root):
    full = CLIPTextConditioner.from_pretrained(model_root).encode(PROMPTS)
    half = CLIPTextConditioner.from_pretrained(model_root, torch_dtype=torch.float16)
    assert half.text_encoder.dtype == torch.float16
    assert half.encode(PROMPTS).dtype == torch.float16
    assert (half.encode(PROMPTS).float() - full).abs().max() < 2e-2
    brain = CLIPTextConditioner.from_pretrained(model_root, torch_dtype=torch.bfloat16)
    assert brain.encode(PROMPTS).dtype == torch.bfloat16
    assert (brain.encode(PROMPTS).float() - full).abs().max() < 0.1


@pytest.mark.parametrize("clip_skip", [None, 1])
def test_sd2_style_text_encoder_matches_reference(tmp_path, helpers, clip_skip):
    """SD 2.x: OpenCLIP-style encoder (gelu) and a tokenizer that pads with '!' (id 0) instead of <|endoftext|>."""
    import transformers
    from difframe_clip.vocab import write_tokenizer_folder
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    write_tokenizer_folder(tmp_path / "tokenizer", pad_token="!")
    torch.manual_seed(1)
    config = transformers.CLIPTextConfig(**{**helpers.tiny_text, "hidden_act": "gelu", "num_hidden_layers": 3})
    transformers.CLIPTextModel(config).save_pretrained(tmp_path / "text_encoder")
    conditioner = CLIPTextConditioner.from_pretrained(tmp_path)
    assert conditioner.tokenize("a cat")[0, 0, :5].tolist() == [49406, 320, 2368, 49407, 0]
    reference = helpers.make_reference_pipeline(
        transformers.CLIPTokenizer.from_pretrained(tmp_path / "tokenizer"),
        transformers.CLIPTextModel.from_pretrained(tmp_path / "text_encoder").eval(),
        StableDiffusionPipeline,
        DDIMScheduler,
    )
    expected, expected_negative = encode_prompt(reference, PROMPTS, ["low quality", ""], clip_skip)
    positive, negative = conditioner.encode_pair(PROMPTS, ["low quality", ""], clip_skip, negative_clip_skip=None)
    assert torch.equal(positive, expected) and torch.equal(negative, expected_negative)
