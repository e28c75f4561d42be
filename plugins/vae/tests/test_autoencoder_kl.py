"""AutoencoderKL against diffusers (the oracle): same weights, same numbers; and its options and errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
from difframe.attention import ReferenceBackend, SlicedBackend, set_attention
from difframe.errors import ConfigError, ModelLoadError
from difframe_vae import AutoencoderKL, DiagonalGaussian

TOL = 1e-4


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def periodic_image(size: int = 128) -> torch.Tensor:
    """A smooth, stationary test image: every tile sees the same statistics."""
    y, x = torch.meshgrid(torch.arange(float(size)), torch.arange(float(size)), indexing="ij")
    channels = [torch.sin(2 * math.pi * x / 8), torch.cos(2 * math.pi * y / 8), 0.5 * torch.sin(math.pi * (x + y) / 8)]
    return torch.stack(channels)[None]


# --- parity with the reference library ------------------------------------------------------------------------------
@torch.no_grad()
def test_encode_decode_match_reference(vae, reference):
    x = torch.randn(2, 3, 32, 48)
    expected = reference.encode(x).latent_dist
    posterior = vae.encode(x)
    assert isinstance(posterior, DiagonalGaussian)
    assert max_diff(posterior.mean, expected.mean) < TOL
    assert max_diff(posterior.std, expected.std) < TOL
    assert max_diff(posterior.kl(), expected.kl()) < 1e-3
    z = torch.randn(2, 4, 8, 12)
    assert max_diff(vae.decode(z), reference.decode(z).sample) < TOL
    assert max_diff(vae(x), reference(x).sample) < TOL


@torch.no_grad()
def test_sample_with_generator_matches_reference(vae, reference):
    x = torch.randn(1, 3, 32, 32)
    ours = vae.encode(x).sample(torch.Generator().manual_seed(3))
    theirs = reference.encode(x).latent_dist.sample(torch.Generator().manual_seed(3))
    assert max_diff(ours, theirs) < TOL
    assert not torch.equal(ours, vae.encode(x).sample(torch.Generator().manual_seed(4)))
    assert torch.equal(vae.encode(x).mode(), vae.encode(x).mean)


@pytest.mark.parametrize(
    "changes",
    [
        {"use_quant_conv": False, "use_post_quant_conv": False},
        {"mid_block_add_attention": False, "layers_per_block": 1},
        {
            "block_out_channels": (16, 32, 32),
            "down_block_types": ("DownEncoderBlock2D",) * 3,
            "up_block_types": ("UpDecoderBlock2D",) * 3,
            "in_channels": 4,
            "out_channels": 2,
            "latent_channels": 3,
        },
    ],
)
@torch.no_grad()
def test_config_variants_match_reference(tmp_path, changes, tiny_config, reference_factory):
    reference = reference_factory({**tiny_config, **changes}, seed=1)
    reference.save_pretrained(tmp_path)
    vae = AutoencoderKL.from_pretrained(tmp_path)
    x = torch.randn(1, vae.config.in_channels, 32, 32)
    assert max_diff(vae.encode(x).mean, reference.encode(x).latent_dist.mean) < TOL
    z = torch.randn(1, vae.config.latent_channels, 8, 8)
    assert max_diff(vae.decode(z), reference.decode(z).sample) < TOL
    assert vae.scale_factor == 2 ** (len(vae.config.block_out_channels) - 1)


@torch.no_grad()
def test_our_save_loads_in_reference(vae, tmp_path):
    from diffusers import AutoencoderKL as Reference

    vae.save_pretrained(tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "config.json").read_text())["_class_name"] == "AutoencoderKL"
    reference = Reference.from_pretrained(tmp_path / "saved").eval()
    z = torch.randn(1, 4, 8, 8)
    assert max_diff(vae.decode(z), reference.decode(z).sample) < TOL


def test_config_fields(vae):
    assert vae.config.scaling_factor == 0.18215
    assert vae.config.shift_factor is None
    assert vae.config.force_upcast is True
    assert vae.scale_factor == 2


# --- slicing, tiling, attention backends, checkpointing -------------------------------------------------------------
@torch.no_grad()
def test_slicing_matches_plain(vae):
    x, z = torch.randn(3, 3, 32, 32), torch.randn(3, 4, 16, 16)
    mean, image = vae.encode(x).mean, vae.decode(z)
    vae.enable_slicing()
    assert max_diff(vae.encode(x).mean, mean) < 1e-5
    assert max_diff(vae.decode(z), image) < 1e-5
    vae.disable_slicing()
    assert not vae.use_slicing


@torch.no_grad()
def test_tiling_matches_reference_tiled_path(vae, reference):
    vae.enable_tiling()
    reference.enable_tiling()
    x, z = torch.randn(1, 3, 64, 80), torch.randn(2, 4, 24, 32)  # 3x4 and 2x3 tiles, partial ones at the edges
    posterior, expected = vae.encode(x), reference.encode(x).latent_dist
    assert max_diff(posterior.mean, expected.mean) < TOL
    assert max_diff(posterior.std, expected.std) < TOL
    image = reference.decode(z).sample
    assert max_diff(vae.decode(z), image) < TOL
    vae.enable_slicing()
    assert max_diff(vae.decode(z), image) < TOL


@torch.no_grad()
def test_tiling_is_close_to_plain_on_smooth_input(vae):
    image = periodic_image(128)
    plain_latent = vae.encode(image).mean
    plain_image = vae.decode(plain_latent)
    vae.enable_tiling(tile_sample_size=64, tile_overlap=0.25)
    tiled_latent = vae.encode(image).mean
    tiled_image = vae.decode(plain_latent)
    assert tiled_latent.shape == plain_latent.shape and tiled_image.shape == plain_image.shape
    # Random weights and per-tile GroupNorm statistics: close, not equal. A missing blend or a shifted tile is far off.
    assert (tiled_latent - plain_latent).abs().mean() < 0.15 * plain_latent.std()
    assert (tiled_image - plain_image).abs().mean() < 0.3 * plain_image.std()


@torch.no_grad()
def test_tiling_settings(vae):
    x = torch.randn(1, 3, 32, 32)
    plain = vae.encode(x).mean
    vae.enable_tiling(tile_sample_size=64)  # larger than the image: the plain path
    assert torch.equal(vae.encode(x).mean, plain)
    vae.enable_tiling(tile_sample_size=16, tile_overlap=0.5)
    assert vae.encode(x).mean.shape == plain.shape
    assert (vae.tile_sample_size, vae.tile_overlap, vae.tile_latent_size) == (16, 0.5, 8)
    with pytest.raises(ValueError, match="multiple of 2"):
        vae.enable_tiling(tile_sample_size=15)
    with pytest.raises(ValueError, match="tile_overlap"):
        vae.enable_tiling(tile_overlap=1.0)
    vae.disable_tiling()
    assert torch.equal(vae.encode(x).mean, plain)


@pytest.mark.parametrize("backend", [SlicedBackend("max"), SlicedBackend(1), ReferenceBackend()])
@torch.no_grad()
def test_attention_backends_match_default(vae, backend):
    x = torch.randn(2, 3, 32, 32)
    expected = vae(x)
    set_attention(vae, backend)
    assert max_diff(vae(x), expected) < 1e-5


def test_gradient_checkpointing_gives_same_gradients(vae):
    x = torch.randn(2, 3, 32, 32)

    def gradients() -> dict[str, torch.Tensor]:
        vae.zero_grad(set_to_none=True)
        vae(x).square().mean().backward()
        return {name: p.grad.clone() for name, p in vae.named_parameters()}

    vae.train()
    plain = gradients()
    vae.enable_gradient_checkpointing()
    assert vae.is_gradient_checkpointing
    checkpointed = gradients()
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        assert max_diff(plain[name], checkpointed[name]) < 1e-6, name
    vae.disable_gradient_checkpointing()
    assert not vae.is_gradient_checkpointing


# --- precision --------------------------------------------------------------------------------------------------------
@torch.no_grad()
def test_fp16_force_upcast_computes_in_fp32(tiny_folder):
    full = AutoencoderKL.from_pretrained(tiny_folder)
    half = AutoencoderKL.from_pretrained(tiny_folder, torch_dtype=torch.float16)
    assert half.dtype == torch.float16
    weights = {k: v.clone() for k, v in half.state_dict().items()}
    z = torch.randn(1, 4, 8, 8)
    image = half.decode(z.half())
    assert image.dtype == torch.float16
    assert half.dtype == torch.float16  # back to fp16 after the fp32 pass, weights unchanged
    assert all(torch.equal(weights[k], v) for k, v in half.state_dict().items())
    # fp32 compute on fp16-rounded weights: far closer than fp16 compute would be
    rounded = AutoencoderKL.from_pretrained(tiny_folder, torch_dtype=torch.float16).float()
    assert max_diff(image, rounded.decode(z.half().float())) < 2e-3
    assert max_diff(image, full.decode(z)) < 5e-2
    posterior = half.encode(torch.randn(1, 3, 32, 32).half())
    assert posterior.mean.dtype == torch.float16


@torch.no_grad()
def test_bf16_close_to_fp32(tiny_folder):
    full = AutoencoderKL.from_pretrained(tiny_folder)
    brain = AutoencoderKL.from_pretrained(tiny_folder, torch_dtype=torch.bfloat16)
    assert brain.dtype == torch.bfloat16
    x = torch.randn(1, 3, 32, 32)
    assert max_diff(brain.encode(x.bfloat16()).mean, full.encode(x).mean) < 0.1
    z = torch.randn(1, 4, 8, 8)
    image = brain.decode(z.bfloat16())
    assert image.dtype == torch.bfloat16
    assert max_diff(image, full.decode(z)) < 0.1


# --- bad input --------------------------------------------------------------------------------------------------------
def test_wrong_input_shapes_are_clear_errors(vae):
    with pytest.raises(ValueError, match="latent has 3 channels but this autoencoder takes 4"):
        vae.decode(torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="image has 4 channels"):
        vae.encode(torch.randn(1, 4, 32, 32))
    with pytest.raises(ValueError, match="multiples of 2"):
        vae.encode(torch.randn(1, 3, 33, 32))
    with pytest.raises(ValueError, match="batch"):
        vae.decode(torch.randn(4, 8, 8))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"norm_num_groups": 6}, "multiple of norm_num_groups"),
        ({"down_block_types": ("DownEncoderBlock2D",)}, "same length"),
        ({"up_block_types": ("UpDecoderBlock2D", "AttnUpDecoderBlock2D")}, "not implemented"),
        ({"act_fn": "tanh"}, "act_fn"),
        ({"latent_channels": 0}, "latent_channels must be at least 1"),
        ({"scaling_factor": 0.0}, "scaling_factor must be a positive number"),
        ({"scaling_factor": math.nan}, "scaling_factor must be a positive number"),
        ({"scaling_factor": -0.18215}, "scaling_factor must be a positive number"),
        ({"block_out_channels": (-32, 64)}, "block_out_channels must be positive"),
    ],
)
def test_invalid_configs_are_rejected(changes, message, tiny_config):
    with pytest.raises(ConfigError, match=message):
        AutoencoderKL.from_config({**tiny_config, **changes})


def test_mistyped_config_names_the_field(tiny_config):
    with pytest.raises(ConfigError, match="block_out_channels"):
        AutoencoderKL.from_config({**tiny_config, "block_out_channels": "wide"})


def test_weights_of_another_architecture_name_the_parameter(tiny_folder, tmp_path):
    config = json.loads((tiny_folder / "config.json").read_text())
    config["latent_channels"] = 8
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "diffusion_pytorch_model.safetensors").write_bytes(
        (tiny_folder / "diffusion_pytorch_model.safetensors").read_bytes()
    )
    with pytest.raises(ModelLoadError, match=r"quant_conv.weight: checkpoint \(8, 8, 1, 1\) vs model \(16, 16, 1, 1\)"):
        AutoencoderKL.from_pretrained(tmp_path)


# --- the plugin -------------------------------------------------------------------------------------------------------
def test_plugin_registers_the_autoencoder():
    from difframe import Framework
    from difframe_vae import plugin

    framework = Framework(plugins=[plugin])
    registration = framework.registry.for_layout("diffusers", "AutoencoderKL")
    assert registration is not None and registration.name == "vae-kl"
    assert registration.spec.role == "autoencoder"
    assert framework.load_factory(registration) is AutoencoderKL


@pytest.mark.parametrize(("name", "options"), [("sliced", {"slice_size": "max"}), ("reference", {}), ("auto", {})])
@torch.no_grad()
def test_attention_by_registered_name(vae, name, options):
    x = torch.randn(1, 3, 32, 32)
    expected = vae(x)
    vae.set_attention(name, **options)
    assert max_diff(vae(x), expected) < 1e-5
    expected_backend = {"sliced": SlicedBackend, "reference": ReferenceBackend}.get(name)
    if expected_backend is not None:
        assert isinstance(vae.decoder.mid_block.attentions[0].backend, expected_backend)
        assert isinstance(vae.encoder.mid_block.attentions[0].backend, expected_backend)


@torch.no_grad()
def test_diagonal_gaussian_matches_reference_distribution():
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    parameters = torch.randn(2, 8, 4, 4) * 3  # log-variances beyond the clamp range too
    parameters[0, 4:] = 40.0
    ours, theirs = DiagonalGaussian(parameters), DiagonalGaussianDistribution(parameters)
    other_parameters = torch.randn(2, 8, 4, 4)
    other, their_other = DiagonalGaussian(other_parameters), DiagonalGaussianDistribution(other_parameters)
    assert torch.equal(ours.std, theirs.std) and torch.equal(ours.logvar, theirs.logvar)
    assert torch.allclose(ours.kl(), theirs.kl())
    assert torch.allclose(ours.kl(other), theirs.kl(their_other))
    sample = torch.randn(2, 4, 4, 4)
    assert torch.allclose(ours.nll(sample), theirs.nll(sample))
    # one generator per image: each image's noise depends on its own generator only
    pair = ours.sample([torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)])
    alone = DiagonalGaussian(parameters[1:]).sample(torch.Generator().manual_seed(2))
    assert torch.equal(pair[1:], alone)
    with pytest.raises(ValueError, match="1 generators for a batch of 2"):
        ours.sample([torch.Generator()])
