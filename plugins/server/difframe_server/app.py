"""The ASGI application: the web UI's API, the native API, the page at `/`, basic auth, the request size limit and
the error handlers, over one ServerState."""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import AsyncIterator
from importlib import resources
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.security import HTTPBasic, HTTPBasicCredentials

from . import __version__, native, webui
from .errors import install_error_handlers
from .settings import ServerSettings
from .state import ServerState
from .waiting import ClientGone

_basic = HTTPBasic(auto_error=False)
Credentials = Annotated[HTTPBasicCredentials | None, Depends(_basic)]


def _auth_dependency(credentials: dict[str, str]) -> Any:
    def check(given: Credentials) -> None:
        if not credentials:
            return
        expected = credentials.get(given.username) if given is not None else None
        if expected is None or not secrets.compare_digest(given.password.encode(), expected.encode()):
            raise HTTPException(401, "Incorrect username or password", headers={"WWW-Authenticate": "Basic"})

    return check


class BodySizeLimit:
    """Refuses request bodies over ``max_bytes`` with 413, before they are read into memory."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await self._refuse(send)
            return
        received = 0

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    return {"type": "http.disconnect"}  # stop reading; the client gets nothing more from us
            return message

        await self.app(scope, limited_receive, send)

    async def _refuse(self, send: Any) -> None:
        body = json.dumps(
            {
                "error": "RequestTooLarge",
                "detail": f"body: the request is larger than the server's limit of {self.max_bytes} bytes "
                "(max_upload_bytes); send a smaller image",
            }
        ).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def create_app(settings: ServerSettings, state: ServerState | None = None) -> FastAPI:
    state = state or ServerState.create(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        state.queue.shutdown(wait=10)

    app = FastAPI(
        title="difframe server",
        version=__version__,
        description="The web UI's API at /sdapi/v1, difframe's own API at /api/v1, and a page at /.",
        dependencies=[Depends(_auth_dependency(settings.api_auth))],
        lifespan=lifespan,
    )
    app.state.server = state
    install_error_handlers(app)

    @app.exception_handler(ClientGone)
    async def client_gone(request: Request, error: ClientGone) -> Response:
        return Response(status_code=499)  # nobody reads it: the client has left

    app.include_router(webui.router)
    app.include_router(native.router)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return resources.files("difframe_server").joinpath("static/index.html").read_text(encoding="utf-8")

    app.add_middleware(BodySizeLimit, max_bytes=settings.limits.max_upload_bytes)
    return app
