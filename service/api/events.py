"""`GET /v1/events`: the canonical events in the order they were stored, for pollers.

``after`` is an opaque cursor; every answer carries ``next_cursor`` (the last event returned, or the
cursor asked for when nothing is new), so a poller keeps asking with the cursor it got last and
sees every event once. ``job_id`` matches our job id or CI's JobId (a media job's; the batch's for
``BatchFinish``); ``type`` is an ``event_type``.
"""

from __future__ import annotations

import base64
import binascii

from aiohttp import web

from service.api.errors import ApiError
from service.appkeys import EVENT_STORE
from service.events.pipeline import EVENT_TYPES

routes = web.RouteTableDef()

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
_CURSOR_PREFIX = "ev1:"


@routes.get("/v1/events")
async def list_events(request: web.Request) -> web.Response:
    query = request.query
    after = decode_cursor(query["after"]) if query.get("after") else 0
    limit = _limit(query.get("limit"))
    event_type = query.get("type")  # present but empty is no event type either: 400
    if event_type is not None and event_type not in EVENT_TYPES:
        raise _invalid("type", f"type must be one of {', '.join(EVENT_TYPES)}")
    page = await request.app[EVENT_STORE].feed(
        after=after, limit=limit, job_id=query.get("job_id") or None, event_type=event_type
    )
    last = page[-1][0] if page else after
    return web.json_response(
        {"events": [event for _, event in page], "next_cursor": encode_cursor(last)}
    )


def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"{_CURSOR_PREFIX}{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raw = ""
    prefix, _, number = raw.partition(_CURSOR_PREFIX)
    # ASCII digits that fit SQLite's 64-bit integers; anything else was not issued here.
    if prefix or not (number.isascii() and number.isdigit() and len(number) <= 18):
        raise _invalid("after", "after is not a cursor this API returned")
    return int(number)


def _limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_LIMIT
    try:
        limit = int(raw)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIMIT:
        raise _invalid("limit", f"limit must be an integer from 1 to {MAX_LIMIT}")
    return limit


def _invalid(parameter: str, message: str) -> ApiError:
    return ApiError(
        400, "invalid_parameter", message, [{"path": f"query.{parameter}", "message": message}]
    )
