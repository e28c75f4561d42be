"""Our UNet with IP-Adapter add-ons against the reference UNet after its load_ip_adapter (IPAdapterAttnProcessor2_0),
on random weights in the published layout."""

from __future__ import annotations

import pytest
import torch
from difframe_ip_adapter.adapter import (
    adapter_from_state_dict,
    attach,
    cross_attention_layers,
    detach,
    read_adapter_file,
    set_scales,
)
from difframe_ip_adapter.testing import IMAGE_EMBED_DIM, IMAGE_HIDDEN_DIM, published_state
from safetensors.torch import save_file

ATOL = 1e-5


def _split(flat: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    parts: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
    for key, value in flat.items():
        prefix, _, rest = key.partition(".")
        parts[prefix][rest] = value
    return parts


_PAIRS: dict = {}


def _pair(config: dict, tmp_path, seed: int = 0):
    """(reference UNet, ours loaded from the reference's save): built once, a fresh copy per test."""
    import copy

    key = (repr(sorted(config.items())), seed)
    if key not in _PAIRS:
        _PAIRS[key] = _new_pair(config, tmp_path, seed)
    return tuple(copy.deepcopy(model) for model in _PAIRS[key])


def _new_pair(config: dict, tmp_path, seed: int):
    from difframe_sd_unet.unet import UNet2DConditionModel
    from diffusers import UNet2DConditionModel as Reference

    torch.manual_seed(seed)
    reference = Reference(**config).eval()
    with torch.no_grad():
        for param in reference.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    reference.save_pretrained(tmp_path / "unet")
    return reference, UNet2DConditionModel.from_pretrained(tmp_path / "unet").eval()


def _image_inputs(kinds: list[str], batch: int, images: int = 1, seed: int = 3) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    out = []
    for kind in kinds:
        shape = (batch, images, IMAGE_EMBED_DIM) if kind == "plain" else (batch, images, 5, IMAGE_HIDDEN_DIM)
        out.append(torch.randn(*shape, generator=generator))
    return out


def _ours(unet, adapters, embeds, masks=None):
    from difframe_ip_adapter.pipeline import project_image_embeds

    tokens = project_image_embeds(adapters, embeds)
    kwargs = {"ip_hidden_states": tokens}
    if masks is not None:
        kwargs["ip_adapter_masks"] = masks
    return kwargs


def _run(config, tmp_path, kinds, scale=None, masks=None, images=1, backend="sdpa"):
    reference, ours = _pair(config, tmp_path)
    states = [published_state_for(config, kind, seed) for seed, kind in enumerate(kinds)]
    reference._load_ip_adapter_weights([_split(s) for s in states], low_cpu_mem_usage=False)
    adapters = [adapter_from_state_dict(_split(s), ours, f"adapter {i}") for i, s in enumerate(states)]
    addons = attach(ours, adapters)
    ours.set_attention(backend)
    if scale is not None:
        set_scales(addons, scale)
        _reference_scale(reference, scale, len(kinds))
    generator = torch.Generator().manual_seed(1)
    sample = torch.randn(2, 4, 16, 16, generator=generator)
    context = torch.randn(2, 7, config["cross_attention_dim"], generator=generator)
    embeds = _image_inputs(kinds, 2, images)
    kwargs = {} if masks is None else {"ip_adapter_masks": masks}
    with torch.no_grad():
        expected = reference(
            sample, 10, context, added_cond_kwargs={"image_embeds": embeds}, cross_attention_kwargs=kwargs
        ).sample
        got = ours(sample, 10, context, cross_attention_kwargs=_ours(ours, adapters, embeds, masks))
    return expected, got, ours, adapters


def published_state_for(config, kind, seed):
    return published_state(config, kind, seed)


def test_masked_images_change_only_their_region_reference(tiny_config, tmp_path):
    """A mask is not vacuous: the masked adapter changes the UNet's output, and differently from no mask."""
    _, _, ours, adapters = _run(tiny_config, tmp_path, ["plain"])
    embeds = _image_inputs(["plain"], 2, 1)
    generator = torch.Generator().manual_seed(1)
    sample = torch.randn(2, 4, 16, 16, generator=generator)
    context = torch.randn(2, 7, tiny_config["cross_attention_dim"], generator=generator)
    half = torch.zeros(1, 1, 64, 64)
    half[..., :32] = 1
    with torch.no_grad():
        full = ours(sample, 10, context, cross_attention_kwargs=_ours(ours, adapters, embeds))
        masked = ours(sample, 10, context, cross_attention_kwargs=_ours(ours, adapters, embeds, [half]))
        empty = ours(sample, 10, context, cross_attention_kwargs=_ours(ours, adapters, embeds, [half * 0]))
        set_scales({n: m.addon for n, m in cross_attention_layers(ours)}, 0.0)
        none = ours(sample, 10, context, cross_attention_kwargs=_ours(ours, adapters, embeds))
    torch.testing.assert_close(empty, none, atol=1e-6, rtol=0)  # an all-zero mask: no image prompt
    assert (masked - full).abs().max() > 1e-4 and (masked - none).abs().max() > 1e-4


def _reference_scale(reference, scale, adapters):
    from diffusers.loaders.unet_loader_utils import _maybe_expand_lora_scales
    from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0

    configs = scale if isinstance(scale, list) else [scale]
    configs = _maybe_expand_lora_scales(reference, configs, default_scale=0.0)
    if len(configs) == 1:
        configs = configs * adapters
    for name, processor in reference.attn_processors.items():
        if isinstance(processor, IPAdapterAttnProcessor2_0):
            for i, config in enumerate(configs):
                if isinstance(config, dict):
                    for key, value in config.items():
                        if name.startswith(key):
                            processor.scale[i] = value
                else:
                    processor.scale[i] = config


@pytest.mark.parametrize("kind", ["plain", "plus", "full"])
def test_one_adapter_matches_reference(kind, tiny_config, tmp_path):
    expected, got, _, _ = _run(tiny_config, tmp_path, [kind])
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def test_two_adapters_and_per_adapter_scales_match_reference(tiny_config, tmp_path):
    expected, got, _, _ = _run(tiny_config, tmp_path, ["plain", "plus"], scale=[0.7, 0.3])
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def test_per_block_scale_dict_matches_reference(tiny_config, tmp_path):
    scale = {"up": {"block_1": [0.0, 1.0, 0.0]}}
    expected, got, ours, _ = _run(tiny_config, tmp_path, ["plain"], scale=scale)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    scales = {name: module.addon.scales[0] for name, module in cross_attention_layers(ours)}
    assert scales["up_blocks.1.attentions.1.transformer_blocks.0.attn2"] == 1.0
    assert sum(scales.values()) == 1.0  # only that layer


def test_several_images_per_adapter_match_reference(tiny_config, tmp_path):
    expected, got, _, _ = _run(tiny_config, tmp_path, ["plain", "full"], images=2)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def test_masks_match_reference(tiny_config, tmp_path):
    masks = [torch.zeros(1, 2, 64, 64), torch.zeros(1, 1, 64, 64)]
    masks[0][:, 0, :, :32] = 1
    masks[0][:, 1, :, 32:] = 1
    masks[1][:, 0, 16:48, 16:48] = 1
    expected, got, _, _ = _run(tiny_config, tmp_path, ["plain", "plus"], masks=None)  # warm-up sanity
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    reference_masks = [masks[0], masks[1]]
    expected, got, _, _ = _run_masked(tiny_config, tmp_path, reference_masks)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def _run_masked(config, tmp_path, masks):
    # adapter 0 has two images (one mask each), adapter 1 one image
    reference, ours = _pair(config, tmp_path)
    states = [published_state_for(config, "plain", 0), published_state_for(config, "plus", 1)]
    reference._load_ip_adapter_weights([_split(s) for s in states], low_cpu_mem_usage=False)
    adapters = [adapter_from_state_dict(_split(s), ours, f"adapter {i}") for i, s in enumerate(states)]
    attach(ours, adapters)
    generator = torch.Generator().manual_seed(1)
    sample = torch.randn(2, 4, 16, 16, generator=generator)
    context = torch.randn(2, 7, config["cross_attention_dim"], generator=generator)
    embeds = [_image_inputs(["plain"], 2, 2)[0], _image_inputs(["plus"], 2, 1, seed=4)[0]]
    with torch.no_grad():
        expected = reference(
            sample, 10, context, added_cond_kwargs={"image_embeds": embeds},
            cross_attention_kwargs={"ip_adapter_masks": masks},
        ).sample  # fmt: skip
        got = ours(sample, 10, context, cross_attention_kwargs=_ours(ours, adapters, embeds, masks))
    return expected, got, ours, adapters


@pytest.mark.parametrize("backend", ["sliced", "reference"])
def test_composes_with_other_backends_reference(backend, tiny_config, tmp_path):
    expected, got, ours, _ = _run(tiny_config, tmp_path, ["plus"], backend=backend)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    assert all(type(m.backend).__name__.lower().startswith(backend[:5]) for _, m in cross_attention_layers(ours))


def test_safetensors_file_round_trip_and_detach(tiny_config, tmp_path):
    state = published_state_for(tiny_config, "plain", 0)
    save_file(state, tmp_path / "ip.safetensors")
    parts = read_adapter_file(tmp_path / "ip.safetensors")
    _, ours = _pair(tiny_config, tmp_path)
    adapter = adapter_from_state_dict(parts, ours, "ip.safetensors")
    attach(ours, [adapter])
    assert all(m.addon is not None for _, m in cross_attention_layers(ours))
    assert not any(k.startswith("ip") or "to_k_ip" in k for k in ours.state_dict())  # the UNet's own weights only
    detach(ours)
    assert all(m.addon is None for _, m in cross_attention_layers(ours))


def test_pickle_needs_allow_pickle(tiny_config, tmp_path):
    parts = _split(published_state_for(tiny_config, "plain", 0))
    torch.save(parts, tmp_path / "ip.bin")
    with pytest.raises(ValueError, match="allow_pickle=True"):
        read_adapter_file(tmp_path / "ip.bin")
    loaded = read_adapter_file(tmp_path / "ip.bin", allow_pickle=True)
    assert torch.equal(loaded["image_proj"]["proj.weight"], parts["image_proj"]["proj.weight"])
