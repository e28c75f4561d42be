"""Errors as JSON the web UI's clients understand ({"error", "detail", ...}), each naming what is wrong; never a
traceback: an unexpected error is logged on the server and answered with a short message."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .catalog import UnknownModel
from .engine import ModelUnavailable
from .images import BadImage
from .jobs import QueueFull, ShuttingDown

log = logging.getLogger("difframe_server")


class FieldError(Exception):
    """A request value we cannot honour: answered 422 (or ``status``) naming the field."""

    def __init__(self, field: str, message: str, status: int = 422) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.status = status


def _body(error: str, detail: str, **extra: Any) -> dict[str, Any]:
    return {"error": error, "detail": detail, **extra}


def _field_name(location: tuple[Any, ...]) -> str:
    parts = [str(p) for p in location if p not in ("body", "query", "path")]
    return ".".join(parts) or "body"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        errors = []
        for item in error.errors():
            field = _field_name(tuple(item.get("loc", ())))
            message = item.get("msg", "invalid value")
            if item.get("type") == "json_invalid":
                field, message = "body", f"malformed JSON: {item.get('ctx', {}).get('error', message)}"
            errors.append({"field": field, "message": message})
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return JSONResponse(status_code=422, content=_body("RequestValidationError", detail, errors=errors))

    @app.exception_handler(FieldError)
    async def field_error(request: Request, error: FieldError) -> JSONResponse:
        content = _body("FieldError", str(error), errors=[{"field": error.field, "message": error.message}])
        return JSONResponse(status_code=error.status, content=content)

    @app.exception_handler(BadImage)
    async def bad_image(request: Request, error: BadImage) -> JSONResponse:
        return JSONResponse(status_code=422, content=_body("BadImage", str(error)))

    @app.exception_handler(UnknownModel)
    async def unknown_model(request: Request, error: UnknownModel) -> JSONResponse:
        return JSONResponse(status_code=404, content=_body("UnknownModel", str(error)))

    @app.exception_handler(ModelUnavailable)
    async def model_unavailable(request: Request, error: ModelUnavailable) -> JSONResponse:
        return JSONResponse(status_code=500, content=_body("ModelUnavailable", str(error)))

    @app.exception_handler(QueueFull)
    async def queue_full(request: Request, error: QueueFull) -> JSONResponse:
        headers = {"Retry-After": str(error.retry_after)}
        return JSONResponse(status_code=503, content=_body("QueueFull", str(error)), headers=headers)

    @app.exception_handler(ShuttingDown)
    async def shutting_down(request: Request, error: ShuttingDown) -> JSONResponse:
        return JSONResponse(status_code=503, content=_body("ShuttingDown", str(error)), headers={"Retry-After": "5"})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        detail = error.detail if isinstance(error.detail, str) else str(error.detail)
        return JSONResponse(
            status_code=error.status_code, content=_body("HTTPException", detail), headers=error.headers
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("error while serving %s %s", request.method, request.url.path)
        detail = f"internal error ({type(error).__name__}); the server log has the details"
        return JSONResponse(status_code=500, content=_body("InternalError", detail))
