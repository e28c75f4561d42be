"""The transformers-backed loaders: difframe's loader keywords, safetensors by default, layout names, the plugin."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from difframe.errors import ModelLoadError
from difframe_clip import CLIPImageProcessor, CLIPTextModelLoader, CLIPTokenizerLoader, CLIPVisionModelLoader

TINY_VISION = {
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "projection_dim": 16,
    "image_size": 32,
    "patch_size": 8,
}


def test_text_encoder_loads_with_pipeline_keywords(model_root):
    encoder = CLIPTextModelLoader.from_pretrained(
        model_root, subfolder="text_encoder", torch_dtype=None, variant=None, allow_pickle=False
    )
    assert type(encoder) is transformers.CLIPTextModel and not encoder.training  # a pipeline saves it as such
    assert encoder.dtype == torch.float32
    reference = transformers.CLIPTextModel.from_pretrained(model_root / "text_encoder")
    ids = torch.tensor([[49406, 320, 1125, 539, 320, 2368, 49407]])
    with torch.no_grad():
        assert torch.equal(encoder(ids).last_hidden_state, reference(ids).last_hidden_state)
    half = CLIPTextModelLoader.from_pretrained(model_root, subfolder="text_encoder", torch_dtype=torch.float16)
    assert half.dtype == torch.float16


def test_variants_and_saves(model_root, tmp_path):
    encoder = CLIPTextModelLoader.from_pretrained(model_root, subfolder="text_encoder")
    encoder.save_pretrained(tmp_path / "text_encoder", variant="fp16")
    config = json.loads((tmp_path / "text_encoder" / "config.json").read_text())
    assert config["architectures"] == ["CLIPTextModel"]
    assert (tmp_path / "text_encoder" / "model.fp16.safetensors").is_file()
    again = CLIPTextModelLoader.from_pretrained(tmp_path, subfolder="text_encoder", variant="fp16")
    assert all(torch.equal(a, b) for a, b in zip(encoder.state_dict().values(), again.state_dict().values()))
    with pytest.raises(ModelLoadError, match="no weights file model.safetensors"):
        CLIPTextModelLoader.from_pretrained(tmp_path, subfolder="text_encoder")


def test_checkpoints_with_the_text_model_prefix_load(model_root, tmp_path):
    """Stable Diffusion text encoders were saved by transformers 4: keys start with 'text_model.'."""
    from safetensors.torch import save_file

    encoder = transformers.CLIPTextModel.from_pretrained(model_root / "text_encoder")
    folder = tmp_path / "text_encoder"
    encoder.config.save_pretrained(folder)
    state = {f"text_model.{key}": value.contiguous() for key, value in encoder.state_dict().items()}
    state["text_model.embeddings.position_ids"] = torch.arange(77)[None]  # a buffer old saves carry
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    loaded = CLIPTextModelLoader.from_pretrained(tmp_path, subfolder="text_encoder")
    assert all(torch.equal(a, b) for a, b in zip(encoder.state_dict().values(), loaded.state_dict().values()))


def test_pickle_weights_need_allow_pickle(model_root, tmp_path):
    encoder = transformers.CLIPTextModel.from_pretrained(model_root / "text_encoder")
    folder = tmp_path / "text_encoder"
    encoder.config.save_pretrained(folder)
    torch.save(encoder.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="only pickle weights.*allow_pickle=True"):
        CLIPTextModelLoader.from_pretrained(tmp_path, subfolder="text_encoder")
    loaded = CLIPTextModelLoader.from_pretrained(tmp_path, subfolder="text_encoder", allow_pickle=True)
    assert torch.equal(loaded.get_input_embeddings().weight, encoder.get_input_embeddings().weight)


def test_wrong_architecture_is_a_load_error(model_root, tmp_path):
    config = json.loads((model_root / "text_encoder" / "config.json").read_text())
    config["hidden_size"] = 48
    folder = tmp_path / "text_encoder"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes((model_root / "text_encoder" / "model.safetensors").read_bytes())
    with pytest.raises(ModelLoadError, match=r"position_embedding.weight: checkpoint \(77, 32\) vs model \(77, 48\)"):
        CLIPTextModelLoader.from_pretrained(tmp_path, subfolder="text_encoder")


def test_tokenizer_loader_round_trips(model_root, tmp_path):
    tokenizer = CLIPTokenizerLoader.from_pretrained(model_root, subfolder="tokenizer", torch_dtype=torch.float16)
    assert type(tokenizer) is transformers.CLIPTokenizer
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    again = transformers.CLIPTokenizer.from_pretrained(tmp_path / "tokenizer")
    assert again("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    with pytest.raises(ModelLoadError, match="does not exist"):
        CLIPTokenizerLoader.from_pretrained(tmp_path / "missing")


@pytest.fixture(scope="module")
def vision_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("vision")
    torch.manual_seed(0)
    config = transformers.CLIPVisionConfig(**TINY_VISION)
    transformers.CLIPVisionModelWithProjection(config).save_pretrained(root / "image_encoder")
    processor = transformers.CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor.save_pretrained(root / "feature_extractor")
    return root


def test_vision_encoder_image_embeddings_equal_transformers(vision_root):
    from PIL import Image

    ours = CLIPVisionModelLoader.from_pretrained(vision_root, subfolder="image_encoder", variant=None)
    assert type(ours) is transformers.CLIPVisionModelWithProjection
    reference = transformers.CLIPVisionModelWithProjection.from_pretrained(vision_root / "image_encoder").eval()
    processor = CLIPImageProcessor.from_pretrained(vision_root, subfolder="feature_extractor", torch_dtype=None)
    reference_processor = transformers.CLIPImageProcessorPil.from_pretrained(vision_root / "feature_extractor")
    generator = torch.Generator().manual_seed(0)
    images = [
        Image.fromarray((torch.rand(48, 40, 3, generator=generator) * 255).byte().numpy()),
        Image.fromarray((torch.rand(30, 64, 3, generator=generator) * 255).byte().numpy()),
    ]
    pixels = processor(images, return_tensors="pt").pixel_values
    assert torch.equal(pixels, reference_processor(images, return_tensors="pt").pixel_values)
    assert pixels.shape == (2, 3, 32, 32)
    with torch.no_grad():
        out, expected = ours(pixels, output_hidden_states=True), reference(pixels, output_hidden_states=True)
    assert out.image_embeds.shape == (2, 16)
    assert torch.equal(out.image_embeds, expected.image_embeds)
    assert torch.equal(out.hidden_states[-2], expected.hidden_states[-2])  # what IP-Adapter Plus reads
    half = CLIPVisionModelLoader.from_pretrained(vision_root, subfolder="image_encoder", torch_dtype=torch.float16)
    assert half.dtype == torch.float16


def test_image_processor_saves_under_the_layout_name(vision_root, tmp_path):
    processor = CLIPImageProcessor.from_pretrained(vision_root, subfolder="feature_extractor")
    processor.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "preprocessor_config.json").read_text())["image_processor_type"] == (
        "CLIPImageProcessor"
    )
    assert CLIPImageProcessor.layout_name == ("transformers", "CLIPImageProcessor")


def test_plugin_registrations(model_root):
    from difframe import Framework
    from difframe_clip import CLIPTextConditioner, plugin

    framework = Framework(plugins=[plugin])
    expected = {
        ("transformers", "CLIPTextModel"): ("text_encoder", CLIPTextModelLoader),
        ("transformers", "CLIPTokenizer"): ("tokenizer", CLIPTokenizerLoader),
        ("transformers", "CLIPTokenizerFast"): ("tokenizer", CLIPTokenizerLoader),
        ("transformers", "CLIPVisionModelWithProjection"): ("image_encoder", CLIPVisionModelLoader),
        ("transformers", "CLIPImageProcessor"): ("feature_extractor", CLIPImageProcessor),
        ("transformers", "CLIPImageProcessorPil"): ("feature_extractor", CLIPImageProcessor),
        ("transformers", "CLIPFeatureExtractor"): ("feature_extractor", CLIPImageProcessor),
    }
    for layout, (role, cls) in expected.items():
        registration = framework.registry.for_layout(*layout)
        assert registration is not None, layout
        assert registration.spec.role == role
        assert framework.load_factory(registration) is cls
    tokenizer = CLIPTokenizerLoader.from_pretrained(model_root, subfolder="tokenizer")
    encoder = CLIPTextModelLoader.from_pretrained(model_root, subfolder="text_encoder")
    conditioner = framework.create("conditioner", "clip-text", tokenizer=tokenizer, text_encoder=encoder)
    assert isinstance(conditioner, CLIPTextConditioner)
    assert conditioner.encode("a cat").shape == (1, 77, 32)


# --- silently wrong loading is refused ---------------------------------------------------------------------------
def test_an_empty_tokenizer_folder_is_refused(tmp_path):
    (tmp_path / "tokenizer").mkdir()
    with pytest.raises(ModelLoadError, match="has no tokenizer vocabulary.*vocab.json and merges.txt"):
        CLIPTokenizerLoader.from_pretrained(tmp_path, subfolder="tokenizer")


def test_a_tokenizer_file_linked_from_outside_is_refused(model_root, tmp_path):
    (tmp_path / "tokenizer").mkdir()
    for name in ("vocab.json", "merges.txt"):
        (tmp_path / "tokenizer" / name).symlink_to(model_root / "tokenizer" / name)
    with pytest.raises(ModelLoadError, match="symlink that leads outside the model folder"):
        CLIPTokenizerLoader.from_pretrained(tmp_path, subfolder="tokenizer")


def _text_encoder_copy(model_root, tmp_path):
    import shutil

    shutil.copytree(model_root / "text_encoder", tmp_path / "text_encoder")
    return tmp_path / "text_encoder"


def test_extra_tensors_in_the_text_encoder_checkpoint_are_an_error(model_root, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = _text_encoder_copy(model_root, tmp_path)
    state = load_file(folder / "model.safetensors")
    save_file({**state, "text_model.extra.weight": torch.ones(2)}, folder / "model.safetensors", {"format": "pt"})
    with pytest.raises(ModelLoadError, match=r"unexpected in the checkpoint \(1\): (text_model\.)?extra.weight"):
        CLIPTextModelLoader.from_pretrained(tmp_path, subfolder="text_encoder")


def test_a_config_with_fewer_layers_than_the_checkpoint_is_an_error(model_root, tmp_path):
    folder = _text_encoder_copy(model_root, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 2}))
    with pytest.raises(ModelLoadError, match=r"unexpected in the checkpoint \(32\).*layers\.[23]"):
        CLIPTextModelLoader.from_pretrained(tmp_path, subfolder="text_encoder")


@pytest.mark.parametrize("changes", [{"hidden_size": -32}, {"num_hidden_layers": 0}, {"num_attention_heads": 5}])
def test_a_bad_text_encoder_config_is_refused_before_weights(model_root, tmp_path, changes):
    from difframe.errors import ConfigError

    folder = _text_encoder_copy(model_root, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))
    named = "attention heads" if "num_attention_heads" in changes else next(iter(changes))
    with pytest.raises(ConfigError, match=f"invalid CLIPTextModel config.*{named}"):
        CLIPTextModelLoader.check_pretrained(tmp_path, subfolder="text_encoder")
