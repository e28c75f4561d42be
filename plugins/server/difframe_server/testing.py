"""Running a server inside this process on a free loopback port, for tests and benchmarks."""

from __future__ import annotations

import base64
import contextlib
import io
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from PIL import Image

from .settings import ServerSettings
from .state import ServerState


@dataclass
class RunningServer:
    url: str
    port: int
    state: ServerState


@contextlib.contextmanager
def serve_in_thread(settings: ServerSettings, engine: Any = None, framework: Any = None) -> Iterator[RunningServer]:
    """Start the app on 127.0.0.1 and a free port in a background thread; stopped (queue shut down) on exit."""
    import uvicorn

    from .app import create_app

    state = ServerState.create(settings, framework=framework, engine=engine)
    app = create_app(settings, state)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=10))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="difframe-test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield RunningServer(url=f"http://127.0.0.1:{port}", port=port, state=state)
    finally:
        state.queue.shutdown()
        server.should_exit = True
        thread.join(30)
        sock.close()


def decode(text: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(text)))


def pixels(image: Image.Image) -> Any:
    import numpy as np

    return np.asarray(image.convert("RGB"), dtype=np.int16)


def assert_same_image(served: Image.Image, direct: Image.Image) -> None:
    """Equal up to one level of 8-bit rounding: the served PNG is lossless, so any difference can only come from
    a float result that lands on the other side of a rounding boundary."""
    difference = abs(pixels(served) - pixels(direct))
    assert served.size == direct.size
    assert difference.max() <= 1, f"served image differs from the direct call by up to {difference.max()} levels"
