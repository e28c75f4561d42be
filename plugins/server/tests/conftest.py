"""Fixtures: the built-in model loaded once, and servers on free loopback ports that share it."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def framework():
    from difframe import Framework

    return Framework()


@pytest.fixture(scope="session")
def engine(framework):
    """One engine holding the built-in model, shared by the test servers (they run one at a time)."""
    from difframe_server.engine import Engine

    engine = Engine(framework, device="cpu", dtype="float32")
    return engine


@pytest.fixture(scope="session")
def reference(framework):
    """A separate pipeline built directly, the way a user would: results of the server must equal its results."""
    return framework.build("stable-diffusion", device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def server(engine, framework):
    from difframe_server.settings import Limits, ServerSettings
    from difframe_server.testing import serve_in_thread

    limits = Limits(
        max_steps=200, max_side=512, max_images=8, max_batch=8, max_upload_bytes=2_000_000, max_upload_pixels=256 * 256
    )
    settings = ServerSettings(limits=limits)
    with serve_in_thread(settings, engine=engine, framework=framework) as running:
        yield running
