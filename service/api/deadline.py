"""The body time-out: a request whose body trickles in is answered 408 instead of holding a
connection and a handler forever (aiohttp times out idle connections, not slow bodies)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

from service.api.errors import ApiError
from service.appkeys import SETTINGS


@contextlib.asynccontextmanager
async def body_deadline(request: web.Request) -> AsyncIterator[None]:
    """Wrap the reading of ``request``'s body; past ``CIRELAY_BODY_TIMEOUT_SECONDS``: 408."""
    seconds = request.app[SETTINGS].body_timeout_seconds
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError:
        message = f"the body did not arrive within {seconds:g} s (CIRELAY_BODY_TIMEOUT_SECONDS)"
        raise ApiError(408, "body_timeout", message) from None
