"""The full Stable Diffusion UNet architectures (random weights) against the reference: slow, real sizes."""

from __future__ import annotations

import gc

import pytest
import torch
from difframe_sd_unet.unet import UNet2DConditionModel

pytestmark = pytest.mark.slow

SD15 = dict(sample_size=64, cross_attention_dim=768)  # every other value is the layout's SD 1.5 default
SD21 = dict(
    sample_size=96,
    cross_attention_dim=1024,
    attention_head_dim=(5, 10, 20, 20),
    use_linear_projection=True,
    upcast_attention=True,
)


@pytest.fixture(scope="module", params=["sd15", "sd21"])
def full_pair(request, tmp_path_factory):
    from diffusers import UNet2DConditionModel as Reference

    torch.manual_seed(0)
    reference = Reference(**(SD15 if request.param == "sd15" else SD21)).eval()
    folder = tmp_path_factory.mktemp(request.param)
    reference.save_pretrained(folder)
    ours = UNet2DConditionModel.from_pretrained(folder)
    yield request.param, reference, ours
    del reference, ours
    gc.collect()


def test_full_architecture_at_256px_matches_the_reference(full_pair):
    name, reference, ours = full_pair
    assert ours.num_parameters() == sum(p.numel() for p in reference.parameters())
    generator = torch.Generator().manual_seed(1)
    sample = torch.randn(2, 4, 32, 32, generator=generator)  # 256x256 pixels
    context = torch.randn(2, 77, ours.config.cross_attention_dim, generator=generator)
    with torch.no_grad():
        expected = reference(sample, 981, context).sample
        got = ours(sample, 981, context)
        assert (got - expected).abs().max() < 1e-4, (name, (got - expected).abs().max())
        ours.set_attention("sliced", slice_size="max")
        sliced = ours(sample[:1], 981, context[:1])
        ours.set_attention("sdpa")
    assert (sliced - expected[:1]).abs().max() < 1e-4
