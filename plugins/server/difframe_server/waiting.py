"""Waiting for a job on behalf of one HTTP request, and letting go of it when the client disconnects."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import Request

from .errors import FieldError
from .jobs import Job

log = logging.getLogger("difframe_server")


class ClientGone(Exception):
    pass


async def _disconnected(request: Request) -> None:
    """Returns when the client closes the connection (the request body has already been read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def wait_for(request: Request, job: Job) -> Any:
    """Wait for a queued job's result; a client that disconnects first cancels it (skipped if still waiting,
    stopped after its current step if running), so no work runs for nobody."""
    result = asyncio.wrap_future(job.future)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({result, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not result.done():
            job.cancel()
            log.info("client of job %d disconnected: job cancelled", job.id)
        gone.cancel()
    if not result.done():
        raise ClientGone()
    try:
        return result.result()
    except (ValueError, TypeError) as error:  # the pipeline's own checks (sizes, strength, ...) name the setting
        raise FieldError("request", str(error)) from None
