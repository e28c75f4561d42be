"""``progress=False`` silences every bar of a load, the libraries' too (transformers' "Loading weights")."""

from __future__ import annotations


def test_no_library_progress_bars_when_progress_is_off(framework, tiny_model, capfd):
    from transformers.utils import logging as transformers_logging

    framework.build("stable-diffusion", model=tiny_model, progress=True)
    assert "Loading weights" in capfd.readouterr().err  # the bar this is about, shown when asked for
    framework.build("stable-diffusion", model=tiny_model, progress=False)
    assert capfd.readouterr().err == ""
    assert transformers_logging.is_progress_bar_enabled()  # restored afterwards
