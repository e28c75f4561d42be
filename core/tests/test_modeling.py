"""ModelMixin: safetensors save/load, variants, shards, dtype, meta construction, checkpointing, bad weights."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from difframe import ModelMixin
from difframe.errors import ModelLoadError
from difframe.modeling import parameters_on_meta
from difframe.testing import ToyDenoiser
from safetensors.torch import load_file, save_file


@pytest.fixture
def model() -> ToyDenoiser:
    torch.manual_seed(0)
    return ToyDenoiser(channels=4, hidden=8)


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_round_trip(tmp_path, model):
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    loaded = ToyDenoiser.from_pretrained(tmp_path / "m")
    assert _same(model, loaded)
    assert loaded.config.hidden == 8 and not loaded.training
    assert loaded.scale.item() == pytest.approx(1 / 1000)  # non-persistent buffer computed by __init__
    sample = torch.randn(1, 4, 2, 2)
    torch.testing.assert_close(loaded(sample, 10), model(sample, 10), rtol=0, atol=0)


def test_construction_on_meta_allocates_nothing():
    with parameters_on_meta():
        big = ToyDenoiser(channels=4, hidden=4096 * 64)
    assert all(p.device.type == "meta" for p in big.parameters())
    assert big.scale.device.type == "cpu"


def test_load_is_memory_mapped(tmp_path):
    if not sys.platform.startswith("linux"):
        pytest.skip("reads resident memory from /proc (Linux only)")
    torch.manual_seed(0)
    ToyDenoiser(channels=4, hidden=2**21).save_pretrained(tmp_path / "big")  # 2M x 9 floats: 72 MB
    import gc

    gc.collect()

    def resident_mb() -> float:
        return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20

    before = resident_mb()
    loaded = ToyDenoiser.from_pretrained(tmp_path / "big")
    grown = resident_mb() - before
    assert grown < 20, f"loading 72 MB of weights grew resident memory by {grown:.0f} MB: not memory-mapped"
    assert loaded.inner.weight.shape[0] == 2**21


def test_torch_dtype_and_device(tmp_path, model):
    model.save_pretrained(tmp_path)
    half = ToyDenoiser.from_pretrained(tmp_path, torch_dtype=torch.float16, device="cpu")
    assert half.dtype == torch.float16 and half.device.type == "cpu"
    torch.testing.assert_close(half.inner.weight.float(), model.inner.weight, atol=1e-3, rtol=1e-3)


def test_keep_in_fp32(tmp_path, model):
    class Mixed(ToyDenoiser):
        keep_in_fp32 = (r"^outer\.",)

    model.save_pretrained(tmp_path)
    mixed = Mixed.from_pretrained(tmp_path, torch_dtype=torch.bfloat16)
    assert mixed.inner.weight.dtype == torch.bfloat16 and mixed.outer.weight.dtype == torch.float32


def test_variant(tmp_path, model):
    model.half().save_pretrained(tmp_path, variant="fp16")
    assert (tmp_path / "diffusion_pytorch_model.fp16.safetensors").is_file()
    assert ToyDenoiser.from_pretrained(tmp_path, variant="fp16", torch_dtype=torch.float16).dtype == torch.float16
    # like the reference library: without torch_dtype the model comes up in float32
    assert ToyDenoiser.from_pretrained(tmp_path, variant="fp16").dtype == torch.float32
    with pytest.raises(ModelLoadError, match="has no weights file diffusion_pytorch_model.safetensors"):
        ToyDenoiser.from_pretrained(tmp_path)


def test_missing_variant_says_what_is_there(tmp_path, model):
    model.save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match=r"no 'fp16' variant .* it has diffusion_pytorch_model.safetensors"):
        ToyDenoiser.from_pretrained(tmp_path, variant="fp16")


def test_sharded(tmp_path, model):
    model.save_pretrained(tmp_path, max_shard_size=300)
    index = json.loads((tmp_path / "diffusion_pytorch_model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and shards[0] == f"diffusion_pytorch_model-00001-of-{len(shards):05d}.safetensors"
    assert _same(model, ToyDenoiser.from_pretrained(tmp_path))


def test_missing_shard(tmp_path, model):
    model.save_pretrained(tmp_path, max_shard_size=300)
    sorted(tmp_path.glob("diffusion_pytorch_model-00002-of-*.safetensors"))[0].unlink()
    with pytest.raises(ModelLoadError, match="names shards that are missing: diffusion_pytorch_model-00002"):
        ToyDenoiser.from_pretrained(tmp_path)


def test_missing_weights_file(tmp_path, model):
    model.save_config(tmp_path)
    with pytest.raises(ModelLoadError, match="has no weights file diffusion_pytorch_model.safetensors"):
        ToyDenoiser.from_pretrained(tmp_path)


@pytest.mark.parametrize("keep_bytes", [4, 100, -16])
def test_truncated_weights_file(tmp_path, model, keep_bytes):
    model.save_pretrained(tmp_path)
    path = tmp_path / "diffusion_pytorch_model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[:keep_bytes])
    with pytest.raises(ModelLoadError, match=r"cannot read weights file .*diffusion_pytorch_model.safetensors"):
        ToyDenoiser.from_pretrained(tmp_path)


def test_mismatched_names_are_listed_never_random(tmp_path, model):
    model.save_pretrained(tmp_path)
    path = tmp_path / "diffusion_pytorch_model.safetensors"
    state = load_file(path)
    state["inner.weights"] = state.pop("inner.weight")
    save_file(state, path)
    with pytest.raises(ModelLoadError) as error:
        ToyDenoiser.from_pretrained(tmp_path)
    message = str(error.value)
    assert "missing from the checkpoint (1): inner.weight" in message
    assert "unexpected in the checkpoint (1): inner.weights" in message


def test_wrong_shape_names_parameter_and_both_shapes(tmp_path, model):
    model.save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match=r"inner.weight: checkpoint \(8, 5, 1, 1\) vs model \(16, 5, 1, 1\)"):
        ToyDenoiser.from_pretrained(tmp_path, hidden=16)


def test_pickles_need_opt_in_and_use_the_weights_only_loader(tmp_path, model):
    model.save_config(tmp_path)
    torch.save(model.state_dict(), tmp_path / "diffusion_pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="only pickle weights .* allow_pickle=True"):
        ToyDenoiser.from_pretrained(tmp_path)
    assert _same(model, ToyDenoiser.from_pretrained(tmp_path, allow_pickle=True))

    class Exploit:
        def __reduce__(self):
            return (print, ("code ran",))

    torch.save({"inner.weight": Exploit()}, tmp_path / "diffusion_pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="refused to load .* weights checkpoint .it would call __builtin__.print"):
        ToyDenoiser.from_pretrained(tmp_path, allow_pickle=True)


def test_save_over_existing_is_atomic(tmp_path, model, monkeypatch):
    model.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "README.md").write_text("mine")
    before = (tmp_path / "m" / "diffusion_pytorch_model.safetensors").read_bytes()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("difframe.modeling.write_state_dict", interrupted)
    torch.manual_seed(1)
    with pytest.raises(KeyboardInterrupt):
        ToyDenoiser(channels=4, hidden=8).save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "diffusion_pytorch_model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no staging folder left behind
    monkeypatch.undo()
    torch.manual_seed(1)
    newer = ToyDenoiser(channels=4, hidden=8)
    newer.save_pretrained(tmp_path / "m")
    assert _same(newer, ToyDenoiser.from_pretrained(tmp_path / "m"))
    assert (tmp_path / "m" / "README.md").read_text() == "mine"  # unrelated files are kept


def test_resave_with_fewer_shards_drops_stale_shards(tmp_path, model):
    model.save_pretrained(tmp_path, max_shard_size=300)
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]


def test_gradient_checkpointing_gives_the_same_gradients(model):
    sample = torch.randn(2, 4, 3, 3)

    def gradients() -> list[torch.Tensor]:
        model.zero_grad()
        model(sample, 5).square().mean().backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = gradients()
    model.enable_gradient_checkpointing()
    assert model.is_gradient_checkpointing
    checkpointed = gradients()
    model.disable_gradient_checkpointing()
    assert not model.is_gradient_checkpointing
    for a, b in zip(plain, checkpointed):
        torch.testing.assert_close(a, b)


def test_checkpointing_refused_where_unsupported():
    class Plain(ModelMixin):
        def __init__(self, width: int = 2) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(width, width)

    with pytest.raises(ValueError, match="does not support gradient checkpointing"):
        Plain().enable_gradient_checkpointing()
    assert Plain(3).num_parameters() == 12


def test_num_parameters(model):
    assert model.num_parameters() == sum(p.numel() for p in model.parameters())
    model.outer.requires_grad_(False)
    assert model.num_parameters(trainable_only=True) == model.inner.weight.numel() + model.inner.bias.numel()


def test_saved_files_have_ordinary_permissions(tmp_path, model):
    import os
    import stat

    mask = os.umask(0o022)
    try:
        model.save_pretrained(tmp_path / "m")
    finally:
        os.umask(mask)
    assert stat.S_IMODE((tmp_path / "m").stat().st_mode) == 0o755
    for path in (tmp_path / "m").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
