"""Fixtures: random IP-Adapter weights in the published layout, sized for a UNet."""

from __future__ import annotations

import pytest
from difframe_ip_adapter.testing import SD1_TINY, published_state


@pytest.fixture
def make_state():
    return published_state


@pytest.fixture
def tiny_config() -> dict:
    return dict(SD1_TINY)
