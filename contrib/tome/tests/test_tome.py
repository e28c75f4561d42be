"""Token merging in difframe's pipeline: exact at ratio 0, a real change otherwise, reproducible random merging,
bad settings refused before any denoising, and composition with guiders and other hooks."""

from __future__ import annotations

import numpy as np
import pytest

SIZE = 32
STEPS = 3


def _images(pipe, seed: int = 5, **kwargs) -> np.ndarray:
    kwargs = dict(height=SIZE, width=SIZE, num_inference_steps=STEPS, output_type="np", **kwargs)
    return pipe("a red bicycle", seed=seed, **kwargs).images


@pytest.fixture(scope="module")
def pipe(framework, tiny_model):
    built = framework.build("stable-diffusion", model=tiny_model)
    built.set_progress_bar_config(disable=True)
    return built


def test_ratio_zero_is_exact_and_merging_changes_the_image(pipe):
    exact = _images(pipe)
    hook = pipe.add_hook("tome", ratio=0.0)
    try:
        assert np.array_equal(_images(pipe), exact)
    finally:
        pipe.remove_hook(hook)
    hook = pipe.add_hook("tome", ratio=0.5, use_rand=False)
    try:
        merged = _images(pipe)
        assert pipe.guidance_record() == {"hooks": [{"name": "tome", "ratio": 0.5, "use_rand": False}]}
    finally:
        pipe.remove_hook(hook)
    assert np.isfinite(merged).all()
    assert float(np.abs(merged - exact).max()) > 1e-3
    assert np.array_equal(_images(pipe), exact)  # removed: every module unwrapped
    assert "forward" not in vars(pipe.unet.conv_in)


def test_random_merging_is_reproducible_from_its_seed(pipe):
    hook = pipe.add_hook("tome", ratio=0.5, seed=1)
    try:
        first, again = _images(pipe), _images(pipe)  # the generator is seeded again for every call
    finally:
        pipe.remove_hook(hook)
    hook = pipe.add_hook("tome", ratio=0.5, seed=2)
    try:
        other = _images(pipe)
    finally:
        pipe.remove_hook(hook)
    assert np.array_equal(first, again)
    assert float(np.abs(first - other).max()) > 1e-4  # the draws matter


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"ratio": 1.0}, r"ratio must be a number in \[0, 1\)"),
        ({"ratio": -0.1}, r"ratio must be a number in \[0, 1\)"),
        ({"ratio": 0.8}, r"ratio 0.8 is more than can be merged with sx=2, sy=2.*at most 0.75"),
        ({"max_downsample": 3}, r"max_downsample must be one of \(1, 2, 4, 8\)"),
        ({"sx": 0}, r"sx must be a positive integer"),
        ({"merge_mlp": "yes"}, r"merge_mlp must be true or false"),
    ],
)
def test_bad_settings_are_refused_before_loading(framework, tiny_model, options, message):
    with pytest.raises(ValueError, match=message):
        framework.build("stable-diffusion", model=tiny_model, hooks=[("tome", options)])


def test_unknown_option_lists_the_known_ones(framework, tiny_model, pipe):
    with pytest.raises(TypeError, match=r"inference hook 'tome' has no option\(s\) 'rate'; it takes .*ratio"):
        framework.build("stable-diffusion", model=tiny_model, hooks=[("tome", {"rate": 0.5})])
    with pytest.raises(ValueError, match="ratio must be"):
        pipe.add_hook("tome", ratio=2)
    assert pipe.hooks == []


@pytest.mark.parametrize(("guider", "options"), [("pag", {"pag_scale": 2.0, "layers": ["down"]}), ("apg", {})])
def test_with_a_guider(framework, tiny_model, guider, options):
    guided = framework.build("stable-diffusion", model=tiny_model, guider=guider, guider_options=options)
    guided.set_progress_bar_config(disable=True)
    without = _images(guided, guidance_scale=5.0)
    guided.add_hook("tome", ratio=0.5)
    both = _images(guided, guidance_scale=5.0)
    assert np.isfinite(both).all() and both.shape == (1, SIZE, SIZE, 3)
    assert float(np.abs(both - without).max()) > 1e-4


def test_a_guider_step_caching_and_token_merging_in_one_call(framework, tiny_model):
    """PAG (a guider with its own hook), DeepCache (contrib/step-cache) and token merging together."""
    guider = dict(guider="pag", guider_options={"pag_scale": 2.0, "layers": ["down"]})
    cached = framework.build(
        "stable-diffusion", model=tiny_model, hooks=[("deepcache", {"interval": 2, "branch": 0})], **guider
    )
    cached.set_progress_bar_config(disable=True)
    without = _images(cached, guidance_scale=5.0)
    cached.add_hook("tome", ratio=0.5)
    everything = _images(cached, guidance_scale=5.0)
    assert [hook.name for hook in cached.hooks] == ["identity-self-attention", "deepcache", "tome"]
    assert np.isfinite(everything).all() and everything.shape == (1, SIZE, SIZE, 3)
    assert float(np.abs(everything - without).max()) > 1e-4
    assert cached.guidance_record()["hooks"] == [
        {"name": "deepcache", "interval": 2, "branch": 0},
        {"name": "tome", "ratio": 0.5},
    ]


@pytest.mark.parametrize("merge_crossattn", [False, True])
def test_with_an_ip_adapter(framework, tiny_model, tmp_path, merge_crossattn):
    """IP-Adapter's attention add-on on attn2, beside (or on) merged tokens."""
    from difframe_ip_adapter.testing import SD1_TINY, colour_image, write_adapter_folder

    adapters = write_adapter_folder(tmp_path / "adapters", SD1_TINY, kinds=("plain",))  # the tiny model's UNet
    pipe = framework.build("stable-diffusion", model=tiny_model)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_ip_adapter(adapters, subfolder="models", weight_name=["ip-adapter-plain.safetensors"])
    image = colour_image(seed=1)
    exact = _images(pipe, ip_adapter_image=image)
    pipe.add_hook("tome", ratio=0.5, merge_crossattn=merge_crossattn)
    merged = _images(pipe, ip_adapter_image=image)
    pipe.set_ip_adapter_scale(0.0)
    without_adapter = _images(pipe, ip_adapter_image=image)
    assert np.isfinite(merged).all() and merged.shape == (1, SIZE, SIZE, 3)
    assert float(np.abs(merged - exact).max()) > 1e-4
    assert float(np.abs(merged - without_adapter).max()) > 1e-4  # the adapter still acts under merging


def test_a_guider_step_caching_token_merging_and_an_ip_adapter_in_one_call(framework, tiny_model, tmp_path):
    """The four extension points at once: CFG-Zero* (a guider), first-block cache and token merging (hooks), and
    IP-Adapter (an attention add-on with its own conditioner); the adapter still acts under all of them."""
    from difframe_ip_adapter.testing import SD1_TINY, colour_image, write_adapter_folder

    adapters = write_adapter_folder(tmp_path / "adapters", SD1_TINY, kinds=("plain",))
    pipe = framework.build(
        "stable-diffusion",
        model=tiny_model,
        guider="cfg-zero-star",
        hooks=[("first-block-cache", {"threshold": 0.5}), ("tome", {"ratio": 0.5})],
        ip_adapter=adapters / "models" / "ip-adapter-plain.safetensors",
    )
    pipe.set_progress_bar_config(disable=True)
    image = colour_image(seed=1)
    everything = _images(pipe, guidance_scale=5.0, ip_adapter_image=image)
    assert [hook.name for hook in pipe.hooks] == ["first-block-cache", "tome"]
    assert pipe.hooks[0].steps_run.count(False) > 0  # the cache really skipped calls
    pipe.set_ip_adapter_scale(0.0)
    without_adapter = _images(pipe, guidance_scale=5.0, ip_adapter_image=image)
    assert np.isfinite(everything).all() and everything.shape == (1, SIZE, SIZE, 3)
    assert float(np.abs(everything - without_adapter).max()) > 1e-4
