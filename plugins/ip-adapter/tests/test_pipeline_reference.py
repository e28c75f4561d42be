"""IP-Adapter in the Stable Diffusion pipelines against the reference pipelines after their load_ip_adapter, on a
tiny model folder written by the reference and adapters with random weights in the published layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from difframe_ip_adapter.testing import SD1_TINY, colour_image, write_adapter_folder

TOL = 1e-4
STEPS = 3
TEXT_TINY = dict(
    bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, hidden_size=32, intermediate_size=37,
    num_attention_heads=4, num_hidden_layers=5, vocab_size=49408, max_position_embeddings=77,
)  # fmt: skip
VAE_TINY = dict(
    block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8, sample_size=32,
    down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
)  # fmt: skip


def _jitter(model):
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    return model.eval()


def _write_model(folder, in_channels: int = 4):
    from difframe_clip import write_tokenizer_folder
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    unet = _jitter(UNet2DConditionModel(**{**SD1_TINY, "in_channels": in_channels}))
    vae = _jitter(AutoencoderKL(**VAE_TINY))
    text = CLIPTextModel(CLIPTextConfig(**TEXT_TINY)).eval()
    tokenizer = CLIPTokenizer.from_pretrained(write_tokenizer_folder(folder.parent / f"{folder.name}-tokenizer"))
    scheduler = DPMSolverMultistepScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    StableDiffusionPipeline(
        vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=scheduler, safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    ).save_pretrained(folder)  # fmt: skip
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("ip")
    model = _write_model(root / "tiny-sd")
    inpaint = _write_model(root / "tiny-inpaint", in_channels=9)
    adapters = write_adapter_folder(root / "adapters", SD1_TINY, kinds=("plain", "plus"))
    return model, inpaint, adapters


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _ours(model, pipeline="stable-diffusion"):
    from difframe import Framework

    pipe = Framework().build(pipeline, model=model)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _theirs(model, kind="text"):
    import diffusers

    cls = {
        "text": diffusers.StableDiffusionPipeline,
        "img2img": diffusers.StableDiffusionImg2ImgPipeline,
        "inpaint": diffusers.StableDiffusionInpaintPipeline,
    }[kind]
    pipe = cls.from_pretrained(model, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _weights(kinds):
    return [f"ip-adapter-{kind}.safetensors" for kind in kinds]


def _load_both(ours, theirs, adapters, kinds, scale=None):
    ours.load_ip_adapter(adapters, subfolder="models", weight_name=_weights(kinds))
    theirs.load_ip_adapter(adapters, subfolder=["models"] * len(kinds), weight_name=_weights(kinds))
    if scale is not None:
        ours.set_ip_adapter_scale(scale)
        theirs.set_ip_adapter_scale(scale)


def _close(a, b):
    difference = float(np.abs(np.asarray(a) - np.asarray(b)).max())
    assert difference <= TOL, f"max abs difference {difference:.2e}"


def _generators(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


@pytest.mark.parametrize(
    ("kinds", "scale"),
    [(("plain",), None), (("plus",), 0.6), (("plain", "plus"), [0.5, {"up": {"block_1": [0.0, 1.0, 0.0]}}])],
)
def test_text_to_image_matches_reference(folders, kinds, scale):
    model, _, adapters = folders
    ours, theirs = _ours(model), _theirs(model)
    _load_both(ours, theirs, adapters, kinds, scale)
    images = [colour_image(seed=i) for i in range(len(kinds))]
    image_arg = images if len(kinds) > 1 else images[0]
    kwargs = dict(num_inference_steps=STEPS, output_type="np", num_images_per_prompt=2)
    got = ours("a red circle", ip_adapter_image=image_arg, seeds=[5, 6], **kwargs).images
    expected = theirs("a red circle", ip_adapter_image=image_arg, generator=_generators([5, 6]), **kwargs).images
    _close(got, expected)
    # the image prompt matters: without it (scale 0) the images differ
    ours.set_ip_adapter_scale(0.0)
    plain = ours("a red circle", ip_adapter_image=image_arg, seeds=[5, 6], **kwargs).images
    assert float(np.abs(plain - got).max()) > 1e-3


def test_image_embeddings_equal_reference_and_are_reusable(folders):
    model, _, adapters = folders
    ours, theirs = _ours(model), _theirs(model)
    _load_both(ours, theirs, adapters, ("plain", "plus"))
    images = [colour_image(seed=1), [colour_image(seed=2), colour_image(seed=3)]]
    got = ours.prepare_ip_adapter_image_embeds(images, None, "cpu", 2, True)
    expected = theirs.prepare_ip_adapter_image_embeds(images, None, "cpu", 2, True)
    assert len(got) == len(expected) == 2
    for g, e in zip(got, expected):
        assert g.shape == e.shape
        torch.testing.assert_close(g, e, atol=1e-6, rtol=0)
    kwargs = dict(num_inference_steps=STEPS, output_type="np", num_images_per_prompt=2, seeds=[1, 2])
    from_images = ours("a cat", ip_adapter_image=images, **kwargs).images
    from_embeds = ours("a cat", ip_adapter_image_embeds=got, **kwargs).images
    _close(from_embeds, from_images)


def test_masks_match_reference(folders):
    model, _, adapters = folders
    ours, theirs = _ours(model), _theirs(model)
    _load_both(ours, theirs, adapters, ("plain", "plus"))
    masks = [torch.zeros(1, 1, 32, 32), torch.zeros(1, 1, 32, 32)]
    masks[0][..., :16] = 1
    masks[1][..., 16:] = 1
    images = [colour_image(seed=1), colour_image(seed=2)]
    kwargs = dict(num_inference_steps=STEPS, output_type="np")
    got = ours("a cat", ip_adapter_image=images, ip_adapter_masks=masks, seed=3, **kwargs).images
    expected = theirs(
        "a cat", ip_adapter_image=images, cross_attention_kwargs={"ip_adapter_masks": masks},
        generator=_generators([3]), **kwargs,
    ).images  # fmt: skip
    _close(got, expected)


def test_image_to_image_and_inpainting_match_reference(folders):
    model, inpaint, adapters = folders
    init, mask = colour_image(seed=7), colour_image(seed=8).convert("L")
    kwargs = dict(num_inference_steps=4, output_type="np", strength=0.75)
    ours, theirs = _ours(model, "img2img"), _theirs(model, "img2img")
    _load_both(ours, theirs, adapters, ("plus",))
    _close(
        ours("a cat", image=init, ip_adapter_image=colour_image(seed=1), seed=2, **kwargs).images,
        theirs("a cat", image=init, ip_adapter_image=colour_image(seed=1), generator=_generators([2]), **kwargs).images,
    )
    ours, theirs = _ours(inpaint, "inpaint"), _theirs(inpaint, "inpaint")
    _load_both(ours, theirs, adapters, ("plain",))
    args = dict(image=init, mask_image=mask, ip_adapter_image=colour_image(seed=1))
    _close(
        ours("a cat", seed=2, **args, **kwargs).images,
        theirs("a cat", generator=_generators([2]), **args, **kwargs).images,
    )


def test_image_i_depends_only_on_its_own_prompt_image_and_seed(folders):
    """One reference image per output image; chunked batches keep the pairing (the reference mixes rows when
    embeddings are passed for a batch: its issue #9813)."""
    model, _, adapters = folders
    pipe = _ours(model)
    pipe.load_ip_adapter(adapters, subfolder="models", weight_name=_weights(("plus",)))
    prompts = ["a cat", "a dog", "a red circle"]
    images = [[colour_image(seed=10 + i)] for i in range(3)]  # one list per prompt
    kwargs = dict(num_inference_steps=STEPS, output_type="np")
    batch = pipe(prompts, ip_adapter_image=images, seeds=[1, 2, 3], **kwargs).images
    pipe.set_memory_budget(1)  # one image per chunk
    chunked = pipe(prompts, ip_adapter_image=images, seeds=[1, 2, 3], **kwargs).images
    pipe.set_memory_budget(None)
    for i in range(3):
        alone = pipe(prompts[i], ip_adapter_image=images[i][0], seeds=[i + 1], **kwargs).images[0]
        _close(batch[i], alone)
        _close(chunked[i], alone)
    # several images per prompt: a different image per output image of one prompt
    per_output = pipe.prepare_ip_adapter_image_embeds(
        [[colour_image(seed=20)], [colour_image(seed=21)]], None, "cpu", 1, True
    )  # 2 prompts' worth -> reuse as one per output image of one prompt
    two = pipe("a cat", ip_adapter_image_embeds=per_output, num_images_per_prompt=2, seeds=[4, 5], **kwargs).images
    first = pipe("a cat", ip_adapter_image=colour_image(seed=20), seeds=[4], **kwargs).images[0]
    second = pipe("a cat", ip_adapter_image=colour_image(seed=21), seeds=[5], **kwargs).images[0]
    _close(two[0], first)
    _close(two[1], second)


def test_unload_and_build_option(folders):
    from difframe import Framework

    model, _, adapters = folders
    file = adapters / "models" / "ip-adapter-plain.safetensors"
    pipe = Framework().build("stable-diffusion", model=model, ip_adapter=str(file), ip_adapter_scale=0.5)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.image_encoder is not None
    kwargs = dict(num_inference_steps=2, output_type="np", seed=1)
    with_image = pipe("a cat", ip_adapter_image=colour_image(), **kwargs).images
    with pytest.raises(ValueError, match="ip_adapter_image"):
        pipe("a cat", **kwargs)
    pipe.unload_ip_adapter()
    assert pipe.image_encoder is None
    plain = pipe("a cat", **kwargs).images
    assert float(np.abs(plain - with_image).max()) > 1e-3
    _close(plain, _ours(model)("a cat", **kwargs).images)
