"""sd-unet against the reference library: same weights (copied through its save_pretrained), same outputs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from difframe.attention import ReferenceBackend, attention_modules
from difframe.errors import ConfigError, ModelLoadError
from difframe_sd_unet.unet import UNet2DConditionModel

TOL = dict(atol=1e-4, rtol=0)


def run_reference(reference, sample, timestep, context, mask=None):
    with torch.no_grad():
        return reference(sample, timestep, context, encoder_attention_mask=mask).sample


# --- parity -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("timestep", [999, 1.5, "per-sample"])
def test_matches_the_reference(pair, make_inputs, timestep):
    config, reference, ours = pair
    sample, context = make_inputs(config)
    if timestep == "per-sample":
        timestep = torch.tensor([10, 700])
    with torch.no_grad():
        got = ours(sample, timestep, context)
    assert got.shape == (2, 4, 16, 16)
    torch.testing.assert_close(got, run_reference(reference, sample, timestep, context), **TOL)


def test_text_attention_mask_matches_the_reference(pair, make_inputs):
    config, reference, ours = pair
    sample, context = make_inputs(config)
    mask = torch.ones(2, 7)
    mask[1, 3:] = 0
    with torch.no_grad():
        got = ours(sample, 500, context, attention_mask=mask)
        unmasked = ours(sample, 500, context)
    torch.testing.assert_close(got, run_reference(reference, sample, 500, context, mask), **TOL)
    torch.testing.assert_close(got[0], unmasked[0], **TOL)  # an all-ones row changes nothing
    assert not torch.allclose(got[1], unmasked[1], atol=1e-3)


def test_our_save_loads_in_the_reference(tmp_path, configs, saved_reference, make_inputs):
    from diffusers import UNet2DConditionModel as Reference

    config = configs["sd2"]
    saved_reference(config, tmp_path / "theirs")
    ours = UNet2DConditionModel.from_pretrained(tmp_path / "theirs")
    ours.save_pretrained(tmp_path / "ours")
    saved = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert saved["_class_name"] == "UNet2DConditionModel"
    assert saved["class_embed_type"] is None  # keys we do not declare are kept from the reference's config
    reloaded = Reference.from_pretrained(tmp_path / "ours").eval()
    sample, context = make_inputs(config)
    with torch.no_grad():
        torch.testing.assert_close(ours(sample, 3, context), run_reference(reloaded, sample, 3, context), **TOL)


def test_config_fields_the_pipeline_reads(pair):
    config, _, ours = pair
    assert ours.config.in_channels == config.get("in_channels", 4)
    assert ours.config.sample_size == 16


def test_lcm_timestep_condition_matches_the_reference(tmp_path, configs, saved_reference, make_inputs):
    config = {**configs["sd1"], "time_cond_proj_dim": 16}
    reference = saved_reference(config, tmp_path)
    ours = UNet2DConditionModel.from_pretrained(tmp_path)
    sample, context = make_inputs(config)
    cond = torch.randn(2, 16)
    with torch.no_grad():
        expected = reference(sample, 250, context, timestep_cond=cond).sample
        torch.testing.assert_close(ours(sample, 250, context, timestep_cond=cond), expected, **TOL)


# --- variants of the same computation ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "options"),
    [("sliced", {}), ("sliced", {"slice_size": "max"}), ("sliced", {"slice_size": 3}), ("reference", {}), ("auto", {})],
)
def test_attention_processors_give_the_same_output(tmp_path, configs, saved_reference, make_inputs, name, options):
    saved_reference(configs["sd2"], tmp_path)
    ours = UNet2DConditionModel.from_pretrained(tmp_path)
    sample, context = make_inputs(configs["sd2"])
    mask = torch.tensor([[1.0] * 7, [1.0] * 4 + [0.0] * 3])
    with torch.no_grad():
        expected = ours(sample, 400, context, attention_mask=mask)
        ours.set_attention(name, **options)
        torch.testing.assert_close(ours(sample, 400, context, attention_mask=mask), expected, atol=1e-5, rtol=0)


def test_channels_last_gives_the_same_output(pair, make_inputs):
    config, _, ours = pair
    sample, context = make_inputs(config)
    with torch.no_grad():
        expected = ours(sample, 50, context)
        ours.to(memory_format=torch.channels_last)
        got = ours(sample, 50, context)  # the model converts its input itself
    assert got.is_contiguous()
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_cross_attention_kwargs_reach_every_attention_addon(tmp_path, configs, saved_reference, make_inputs):
    saved_reference(configs["sd1"], tmp_path)
    ours = UNet2DConditionModel.from_pretrained(tmp_path)
    seen = []

    def addon(attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        seen.append((attn.is_cross_attention, kwargs))
        return attn.default_forward(hidden_states, encoder_hidden_states, attention_mask)

    sample, context = make_inputs(configs["sd1"])
    with torch.no_grad():
        expected = ours(sample, 5, context)
        ours.set_attention(addon)
        got = ours(sample, 5, context, cross_attention_kwargs={"ip_scale": 0.5})
    torch.testing.assert_close(got, expected, atol=0, rtol=0)
    modules = len(list(attention_modules(ours)))
    assert len(seen) == modules == 2 * (2 + 1 + 3)  # self + cross, in 2 down, 1 mid and 3 up transformers
    assert all(kwargs == {"ip_scale": 0.5} for _, kwargs in seen)
    assert sum(cross for cross, _ in seen) == modules // 2


def test_gradient_checkpointing_gives_the_same_gradients(tmp_path, configs, saved_reference, make_inputs):
    saved_reference(configs["sd2"], tmp_path)
    sample, context = make_inputs(configs["sd2"])
    grads = []
    for checkpointing in (False, True):
        model = UNet2DConditionModel.from_pretrained(tmp_path).train()
        if checkpointing:
            model.enable_gradient_checkpointing()
        assert model.is_gradient_checkpointing == checkpointing
        x = sample.clone().requires_grad_()
        ctx = context.clone().requires_grad_()
        model(x, 300, ctx).square().mean().backward()
        grads.append([x.grad, ctx.grad, *(p.grad for p in model.parameters())])
    assert len(grads[0]) == len(grads[1]) and all(g is not None for g in grads[1])
    for plain, checkpointed in zip(*grads):
        torch.testing.assert_close(checkpointed, plain, atol=1e-6, rtol=1e-5)


# --- dtypes -------------------------------------------------------------------------------------------------------
def test_bfloat16_forward_is_close_to_float32(pair, make_inputs):
    config, _, ours = pair
    sample, context = make_inputs(config)
    with torch.no_grad():
        expected = ours(sample, 600, context)
        ours.to(torch.bfloat16)
        got = ours(sample.bfloat16(), 600, context.bfloat16())
    assert got.dtype == torch.bfloat16
    # bf16 keeps 8 bits of mantissa: errors of a few 1e-2 on outputs of unit scale
    error = (got.float() - expected).abs()
    assert error.max() < 0.1 and error.mean() < 0.01, (error.max(), error.mean())


def test_float16_load_keeps_the_dtype(tmp_path, configs, saved_reference, make_inputs):
    saved_reference(configs["sd2"], tmp_path)
    ours = UNet2DConditionModel.from_pretrained(tmp_path, torch_dtype=torch.float16)
    assert {p.dtype for p in ours.parameters()} == {torch.float16}
    assert ours.dtype == torch.float16
    reference = UNet2DConditionModel.from_pretrained(tmp_path)
    sample, context = make_inputs(configs["sd2"])
    with torch.no_grad():
        got = ours(sample.half(), 20, context.half())
        expected = reference(sample, 20, context)
    assert got.dtype == torch.float16
    assert (got.float() - expected).abs().max() < 0.02


# --- bad input ----------------------------------------------------------------------------------------------------
def test_weights_of_another_architecture_name_the_parameter_and_both_shapes(tmp_path, configs, saved_reference):
    saved_reference(configs["sd1"], tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "cross_attention_dim": 16}))
    with pytest.raises(ModelLoadError, match=r"attn2\.to_k\.weight: checkpoint \(32, 32\) vs model \(32, 16\)"):
        UNet2DConditionModel.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"attention_head_dim": 5}, "5 attention heads .* do not divide the 32 channels"),
        ({"attention_head_dim": (4, 4, 4)}, "attention_head_dim has 3 entries, but there are 2 down blocks"),
        ({"norm_num_groups": 24}, "norm_num_groups 24 does not divide"),
        ({"up_block_types": ("UpBlock2D",)}, "must have the same length"),
        ({"down_block_types": ("SimpleCrossAttnDownBlock2D", "DownBlock2D")}, "'SimpleCrossAttnDownBlock2D' is not"),
        ({"act_fn": "gelu"}, "act_fn 'gelu' is not implemented"),
        ({"class_embed_type": "timestep"}, "does not implement class_embed_type='timestep'"),
        ({"addition_embed_type": "text_time"}, "does not implement addition_embed_type='text_time'"),
        ({"num_class_embeds": 10}, "num_class_embeds=10"),
        ({"only_cross_attention": [True, False]}, "only_cross_attention"),
        ({"dual_cross_attention": True}, "dual_cross_attention=True"),
        ({"mid_block_type": "UNetMidBlock2DSimpleCrossAttn"}, "mid_block_type"),
        ({"layers_per_block": "two"}, "field layers_per_block"),
        ({"in_channels": -4}, "must be positive; got in_channels=-4"),
        ({"block_out_channels": (-32, 64)}, r"block_out_channels\[0\]=-32"),
        ({"layers_per_block": 0}, "layers_per_block=0"),
    ],
)
def test_configs_that_describe_no_valid_network_are_refused(configs, changes, message):
    with pytest.raises(ConfigError, match=message):
        UNet2DConditionModel.from_config({**configs["sd1"], **changes})


def test_defaults_of_unimplemented_features_are_accepted(configs):
    defaults = {"class_embed_type": None, "only_cross_attention": [False, False], "time_embedding_type": "positional"}
    model = UNet2DConditionModel.from_config({**configs["sd1"], **defaults})
    assert model.config.class_embed_type is None


def test_inputs_of_the_wrong_shape_are_refused(pair, make_inputs):
    config, _, ours = pair
    sample, context = make_inputs(config)
    with pytest.raises(ValueError, match=r"expects latents of shape \(batch, \d, height, width\)"):
        ours(sample[:, :3], 1, context)
    with pytest.raises(ValueError, match="multiples of"):
        ours(sample[..., :15], 1, context)
    with pytest.raises(ValueError, match="cross_attention_dim"):
        ours(sample, 1, context[..., :-1])
    with pytest.raises(ValueError, match="timestep must be one value or one per sample"):
        ours(sample, torch.tensor([1, 2, 3]), context)


# --- the plugin ---------------------------------------------------------------------------------------------------
def test_the_plugin_registers_the_loader_without_importing_torch():
    code = (
        "import sys; from difframe import Framework; f = Framework(); r = f.get('model', 'sd-unet'); "
        "assert f.registry.for_layout('diffusers', 'UNet2DConditionModel') is r, r; "
        "assert r.spec.role == 'denoiser'; assert 'torch' not in sys.modules; "
        "cls = f.load_factory(r); print(cls.__module__, cls.__name__)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "difframe_sd_unet.unet UNet2DConditionModel"


def test_pipeline_style_loading_ignores_the_options_that_do_not_apply(tmp_path, configs, saved_reference):
    saved_reference(configs["sd1"], tmp_path / "unet")
    model = UNet2DConditionModel.from_pretrained(
        tmp_path, subfolder="unet", torch_dtype=None, variant=None, allow_pickle=False
    )
    assert isinstance(model, UNet2DConditionModel) and not model.training


def test_reference_backend_through_the_model_api(pair, make_inputs):
    config, reference, ours = pair
    ours.set_attention(ReferenceBackend())
    sample, context = make_inputs(config, batch=1)
    with torch.no_grad():
        torch.testing.assert_close(ours(sample, 77, context), run_reference(reference, sample, 77, context), **TOL)
