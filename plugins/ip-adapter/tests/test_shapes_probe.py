"""The linear probe behind the shapes adapter card's diagnosis: it finds what is linearly there, and only that."""

from __future__ import annotations

import numpy as np
from difframe_ip_adapter.shapes.probe import probe_accuracy


def test_probe_reads_a_linear_signal_and_not_noise():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 600)
    signal = np.eye(3)[labels] * 4 + rng.normal(0, 0.5, (600, 3))
    noise = rng.normal(0, 1, (600, 8))
    train, test = slice(0, 400), slice(400, 600)
    with_signal = np.c_[signal, noise]
    assert probe_accuracy((with_signal[train], labels[train]), (with_signal[test], labels[test])) > 0.95
    assert probe_accuracy((noise[train], labels[train]), (noise[test], labels[test])) < 0.5  # chance is 1/3
