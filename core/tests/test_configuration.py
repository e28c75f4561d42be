"""ConfigMixin: recorded constructor arguments, JSON round trips, unknown keys kept, clear validation errors."""

from __future__ import annotations

import json
from typing import Literal

import pytest
from difframe import ConfigMixin
from difframe.errors import ConfigError, ModelLoadError


class Sampler(ConfigMixin):
    config_name = "scheduler_config.json"
    layout_name = ("diffusers", "DDIMScheduler")

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_schedule: Literal["linear", "scaled_linear"] = "linear",
        betas: tuple[float, ...] | None = None,
    ) -> None:
        self.steps = num_train_timesteps


class Derived(Sampler):
    def __init__(self, sigma: float, **kwargs) -> None:
        super().__init__(num_train_timesteps=10)
        self.sigma = sigma


def test_constructor_arguments_become_the_config():
    sampler = Sampler(500, beta_schedule="scaled_linear")
    assert dict(sampler.config) == {"num_train_timesteps": 500, "beta_schedule": "scaled_linear", "betas": None}
    assert sampler.config.num_train_timesteps == 500
    with pytest.raises(AttributeError, match="read-only"):
        sampler.config.num_train_timesteps = 3


def test_most_derived_constructor_is_recorded():
    assert dict(Derived(sigma=2.0).config) == {"sigma": 2.0}


def test_save_and_load_round_trip(tmp_path):
    sampler = Sampler(250, betas=(0.1, 0.2))
    sampler.save_config(tmp_path)
    saved = json.loads((tmp_path / "scheduler_config.json").read_text())
    assert saved["_class_name"] == "DDIMScheduler"
    assert saved["betas"] == [0.1, 0.2]
    loaded = Sampler.from_config(Sampler.load_config(tmp_path))
    assert dict(loaded.config) == dict(sampler.config)
    assert loaded.config.betas == (0.1, 0.2)  # the typed constructor turns JSON lists back into tuples


def test_unknown_keys_are_kept_through_a_round_trip(tmp_path):
    config = {
        "_class_name": "PNDMScheduler",
        "_diffusers_version": "0.30.0",
        "num_train_timesteps": 7,
        "skip_prk_steps": True,
        "steps_offset": 1,
    }
    sampler = Sampler.from_config(config)
    assert sampler.steps == 7
    assert sampler.config.skip_prk_steps is True and sampler.config.steps_offset == 1
    assert "_diffusers_version" not in sampler.config
    sampler.save_config(tmp_path)
    again = Sampler.from_config(Sampler.load_config(tmp_path))
    assert again.config.skip_prk_steps is True


def test_overrides_win_over_config():
    sampler = Sampler.from_config({"num_train_timesteps": 7}, num_train_timesteps=9)
    assert sampler.config.num_train_timesteps == 9


def test_wrong_type_names_the_field():
    with pytest.raises(ConfigError) as error:
        Sampler.from_config({"num_train_timesteps": "many"})
    message = str(error.value)
    assert "invalid config for Sampler" in message
    assert "field num_train_timesteps" in message and "'many'" in message


def test_value_outside_the_allowed_choices_names_the_field():
    with pytest.raises(ConfigError, match=r"field beta_schedule: input should be 'linear' or 'scaled_linear'"):
        Sampler.from_config({"beta_schedule": "cosine"})


def test_missing_required_field_is_named():
    with pytest.raises(ConfigError, match="field sigma: field required"):
        Derived.from_config({})


def test_invalid_json_file_is_reported(tmp_path):
    (tmp_path / "scheduler_config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="is not valid JSON"):
        Sampler.load_config(tmp_path)


def test_missing_config_file_is_reported(tmp_path):
    with pytest.raises(ModelLoadError, match="needs a scheduler_config.json"):
        Sampler.load_config(tmp_path)


def test_save_config_never_leaves_a_partial_file(tmp_path, monkeypatch):
    sampler = Sampler(3)
    sampler.save_config(tmp_path)
    before = (tmp_path / "scheduler_config.json").read_text()

    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("os.replace", fail)
    with pytest.raises(KeyboardInterrupt):
        Sampler(4).save_config(tmp_path)
    assert (tmp_path / "scheduler_config.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scheduler_config.json"]


def test_config_survives_copy_and_pickle():
    import copy
    import pickle

    sampler = Sampler(12, betas=(0.5,))
    for clone in (copy.deepcopy(sampler), pickle.loads(pickle.dumps(sampler))):
        assert dict(clone.config) == dict(sampler.config)
        assert clone.config.num_train_timesteps == 12
