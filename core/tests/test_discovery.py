"""Plugin discovery: entry points, explicit plugins, environment filters, and plugins that go wrong."""

from __future__ import annotations

import pytest
from difframe import Framework, SchedulerSpec, hookimpl
from difframe.errors import UnknownComponentError
from difframe.testing import ToyPlugin

GOOD = """
from difframe import hookimpl

@hookimpl
def register_scheduler(register):
    register(name="good-sampler", factory="difframe.testing:ToyScheduler", aliases=("Good Sampler",))
"""


def test_entry_point_plugin_is_discovered(fake_plugin):
    fake_plugin("difframe-good", GOOD, version="2.5")
    framework = Framework()
    info = {p.name: p for p in framework.plugins}["difframe-good"]
    assert info.version == "2.5"
    assert info.hooks == ["register_scheduler"]
    assert "good-sampler" in framework.schedulers
    assert framework.get("scheduler", "GOOD sampler").plugin == "difframe-good"
    assert framework.scheduler("good-sampler").config.num_train_timesteps == 1000


def test_core_registers_its_attention_backends_through_its_entry_point():
    framework = Framework()
    assert {"sdpa", "sliced", "reference"} <= set(framework.attention_processors)
    assert framework.get("attention_processor", "sdpa").plugin == "difframe"


def test_explicit_plugins_only():
    framework = Framework(plugins=[ToyPlugin()])
    assert [p.name for p in framework.plugins] == ["difframe-toys"]
    assert framework.schedulers == ["toy"]
    assert framework.pipelines == ["toy"]
    assert framework.models == ["toy-denoiser"]


def test_explicit_plugin_module(tmp_path, fake_plugin):
    fake_plugin("difframe-good", GOOD)
    import difframe_good

    framework = Framework(plugins=[difframe_good])
    assert framework.schedulers == ["good-sampler"]
    combined = Framework(plugins=[ToyPlugin()], entry_points=True)
    assert {"toy", "good-sampler"} <= set(combined.schedulers)


def test_load_and_disable_environment_variables(fake_plugin, monkeypatch):
    fake_plugin("difframe-good", GOOD)
    fake_plugin("difframe-other", GOOD.replace("good-sampler", "other-sampler").replace("Good", "Other"))
    monkeypatch.setenv("DIFFRAME_LOAD_PLUGINS", "difframe-good")
    assert [p.name for p in Framework().plugins] == ["difframe-good"]
    monkeypatch.setenv("DIFFRAME_LOAD_PLUGINS", "")
    assert Framework().plugins == []
    monkeypatch.delenv("DIFFRAME_LOAD_PLUGINS")
    monkeypatch.setenv("DIFFRAME_DISABLE_PLUGINS", "difframe-good, difframe")
    names = [p.name for p in Framework().plugins]
    assert "difframe-good" not in names and "difframe" not in names and "difframe-other" in names


def test_plugin_whose_import_fails_is_reported_and_others_load(fake_plugin):
    fake_plugin("difframe-broken", "import not_a_real_module_xyz\n")
    fake_plugin("difframe-good", GOOD)
    framework = Framework()
    broken = {p.name: p for p in framework.plugins}["difframe-broken"]
    assert broken.broken
    assert broken.problems[0].stage == "import"
    assert "No module named 'not_a_real_module_xyz'" in broken.problems[0].message
    assert "good-sampler" in framework.schedulers
    with pytest.raises(UnknownComponentError, match="difframe-broken"):
        framework.get("scheduler", "missing-sampler")


def test_plugin_whose_hook_raises_is_reported_and_others_load(fake_plugin):
    fake_plugin(
        "difframe-raising",
        """
        from difframe import hookimpl

        @hookimpl
        def register_scheduler(register):
            register(name="early", factory="difframe.testing:ToyScheduler")
            raise RuntimeError("boom")
        """,
    )
    fake_plugin("difframe-good", GOOD)
    framework = Framework()
    raising = {p.name: p for p in framework.plugins}["difframe-raising"]
    assert raising.broken
    assert "register_scheduler raised RuntimeError: boom" in raising.problems[0].message
    assert "difframe_raising.py" in raising.problems[0].message
    assert "good-sampler" in framework.schedulers


def test_invalid_spec_is_reported_and_the_plugins_other_registrations_land():
    class Plugin:
        __name__ = "half-good"

        @hookimpl
        def register_scheduler(self, register):
            register(name="Bad Name!", factory="not a factory")
            register(name="fine", factory="difframe.testing:ToyScheduler")
            register(name="typo", factory="difframe.testing:ToyScheduler", stochastc=True)

    framework = Framework(plugins=[Plugin()])
    assert framework.schedulers == ["fine"]
    messages = [p.message for p in framework.problems]
    assert any("'Bad Name!' is invalid" in m and "name:" in m and "factory:" in m for m in messages)
    assert any("'typo' is invalid" in m and "stochastc" in m for m in messages)
    assert all(p.stage == "spec" for p in framework.problems)


def test_spec_object_of_the_wrong_kind_is_reported():
    class Plugin:
        __name__ = "wrong-kind"

        @hookimpl
        def register_pipeline(self, register):
            register(SchedulerSpec(name="x", factory="a:b"))

    framework = Framework(plugins=[Plugin()])
    assert framework.pipelines == []
    assert "expected a difframe.specs.PipelineSpec, got SchedulerSpec" in framework.problems[0].message


def test_hook_with_wrong_signature_is_reported():
    class Plugin:
        __name__ = "wrong-signature"

        @hookimpl
        def register_scheduler(self, register, extra):
            pass

    framework = Framework(plugins=[Plugin()])
    assert framework.plugins[0].broken
    assert "invalid hook implementation" in framework.problems[0].message


def _sampler_plugin(plugin_name: str, factory: str, aliases=()):
    class Plugin:
        __name__ = plugin_name

        @hookimpl
        def register_scheduler(self, register):
            register(name="shared", factory=factory, aliases=aliases)

    return Plugin()


def test_same_name_twice_first_plugin_by_name_wins_and_conflict_is_reported():
    a = _sampler_plugin("aaa", "difframe.testing:ToyScheduler")
    b = _sampler_plugin("bbb", "other.module:Scheduler")
    for order in ([a, b], [b, a]):
        framework = Framework(plugins=order)
        assert framework.get("scheduler", "shared").plugin == "aaa"
        assert framework.get("scheduler", "bbb:shared").spec.factory == "other.module:Scheduler"
        (problem,) = framework.problems
        assert problem.plugin == "bbb" and problem.stage == "conflict"
        assert "also registered by plugin 'aaa', which wins" in problem.message


def test_alias_clash_keeps_the_first_and_reports():
    a = _sampler_plugin("aaa", "difframe.testing:ToyScheduler", aliases=("Fast",))

    class Plugin:
        __name__ = "bbb"

        @hookimpl
        def register_scheduler(self, register):
            register(name="other", factory="difframe.testing:ToyScheduler", aliases=("fast",))

    framework = Framework(plugins=[Plugin(), a])
    assert framework.get("scheduler", "FAST").name == "shared"
    assert framework.get("scheduler", "other").name == "other"
    assert "alias 'fast'" in framework.problems[0].message


def test_unknown_name_lists_installed_and_suggests_closest():
    framework = Framework(plugins=[ToyPlugin()])
    with pytest.raises(UnknownComponentError) as error:
        framework.get("scheduler", "toi")
    message = str(error.value)
    assert "no scheduler named 'toi' is installed" in message
    assert "Did you mean 'toy'?" in message
    assert "Installed schedulers: toy." in message


def test_unknown_name_says_which_package_provides_it():
    with pytest.raises(UnknownComponentError, match=r"provided by the package 'difframe-plugin-lcm': pip install"):
        Framework(plugins=[ToyPlugin()]).scheduler("lcm")


def test_every_registration_hook_lands_in_its_kind():
    class Plugin:
        __name__ = "every-hook"

        @hookimpl
        def register_scheduler(self, register):
            register(name="s", factory="a:b")

        @hookimpl
        def register_model(self, register):
            register(name="m", factory="a:b", role="denoiser", loads=[("diffusers", "UNet2DConditionModel")])

        @hookimpl
        def register_conditioner(self, register):
            register(name="c", factory="a:b", modality="image")

        @hookimpl
        def register_attention_processor(self, register):
            register(name="a", factory="a:b", role="addon")

        @hookimpl
        def register_pipeline(self, register):
            register(name="p", factory="a:b", default_model="org/model")

    framework = Framework(plugins=[Plugin()])
    assert (framework.schedulers, framework.models, framework.conditioners) == (["s"], ["m"], ["c"])
    assert (framework.attention_processors, framework.pipelines) == (["a"], ["p"])
    assert framework.registry.for_layout("diffusers", "UNet2DConditionModel").name == "m"
    assert framework.get("conditioner", "c").spec.modality == "image"
    assert framework.get("pipeline", "p").spec.default_model == "org/model"
    assert framework.plugins[0].hooks == sorted(
        [
            "register_scheduler",
            "register_model",
            "register_conditioner",
            "register_attention_processor",
            "register_pipeline",
        ]
    )
