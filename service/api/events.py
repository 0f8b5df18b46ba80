"""`GET /v1/events`: the canonical events in the order they were stored, for pollers.

``after`` is an opaque cursor; every answer carries ``next_cursor`` (the last event returned, or the
cursor asked for when nothing is new), so a poller keeps asking with the cursor it got last and
sees every event once. ``job_id`` matches our job id or CI's JobId (a media job's; the batch's for
``BatchFinish``); ``type`` is an ``event_type``.
"""

from __future__ import annotations

from aiohttp import web

from service.api.params import decode_position, encode_position, invalid_parameter, parse_limit
from service.appkeys import EVENT_STORE
from service.events.pipeline import EVENT_TYPES
from service.storage import FEED_START

routes = web.RouteTableDef()

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
_CURSOR_PREFIX = "ev1:"


@routes.get("/v1/events")
async def list_events(request: web.Request) -> web.Response:
    query = request.query
    after = (
        decode_position(_CURSOR_PREFIX, query["after"], parameter="after")
        if query.get("after")
        else FEED_START
    )
    limit = parse_limit(query.get("limit"), default=DEFAULT_LIMIT, maximum=MAX_LIMIT)
    event_type = query.get("type")  # present but empty is no event type either: 400
    if event_type is not None and event_type not in EVENT_TYPES:
        raise invalid_parameter("type", f"type must be one of {', '.join(EVENT_TYPES)}")
    page = await request.app[EVENT_STORE].feed(
        after=after, limit=limit, job_id=query.get("job_id") or None, event_type=event_type
    )
    last = page[-1][0] if page else after
    return web.json_response(
        {
            "events": [event for _, event in page],
            "next_cursor": encode_position(_CURSOR_PREFIX, last),
        }
    )
