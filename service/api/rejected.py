"""`/v1/rejected`: list the refused bodies kept for replay, and replay one or all of them.

``GET /v1/rejected?reason=&source=&limit=&cursor=`` lists them oldest first;
``POST /v1/rejected/{id}/replay`` replays one, ``POST /v1/rejected/replay?reason=&source=&limit=``
every match (oldest first, at most ``limit``) through today's pipeline (``service.events.replay``).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from service.api.errors import ApiError
from service.api.params import decode_cursor, encode_cursor, invalid_parameter, parse_limit
from service.appkeys import EVENT_PIPELINE, EVENT_STORE
from service.events.replay import replay
from service.ingest.normalize import SOURCES
from service.storage import RejectedCallback

routes = web.RouteTableDef()

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
DEFAULT_REPLAY_LIMIT = 100
MAX_REPLAY_LIMIT = 1000
_CURSOR_PREFIX = "rj1:"
# A row id as this API shows it: digits that fit SQLite's 64-bit integers.
_MAX_ID_DIGITS = 18


@routes.get("/v1/rejected")
async def list_rejected(request: web.Request) -> web.Response:
    query = request.query
    after = (
        decode_cursor(_CURSOR_PREFIX, query["cursor"], parameter="cursor", code="invalid_cursor")
        if query.get("cursor")
        else 0
    )
    limit = parse_limit(query.get("limit"), default=DEFAULT_LIMIT, maximum=MAX_LIMIT)
    reason, source = _filters(request)
    rows = await request.app[EVENT_STORE].rejected(
        after=after, limit=limit + 1, reason=reason, source=source
    )
    page, more = rows[:limit], len(rows) > limit
    return web.json_response(
        {
            "rejected": [_view(row) for row in page],
            "next_cursor": encode_cursor(_CURSOR_PREFIX, page[-1].id) if more else None,
        }
    )


@routes.post("/v1/rejected/{id}/replay")
async def replay_one(request: web.Request) -> web.Response:
    raw = request.match_info["id"]
    kept = None
    if raw.isascii() and raw.isdigit() and len(raw) <= _MAX_ID_DIGITS:
        kept = await request.app[EVENT_STORE].get_rejected(int(raw))
    if kept is None:
        raise ApiError(404, "rejected_not_found", f"no kept body {raw}")
    return web.json_response(
        await replay(request.app[EVENT_STORE], request.app[EVENT_PIPELINE], kept)
    )


@routes.post("/v1/rejected/replay")
async def replay_matching(request: web.Request) -> web.Response:
    limit = parse_limit(
        request.query.get("limit"), default=DEFAULT_REPLAY_LIMIT, maximum=MAX_REPLAY_LIMIT
    )
    reason, source = _filters(request)
    store, pipeline = request.app[EVENT_STORE], request.app[EVENT_PIPELINE]
    # One page of rows at a time: a refused replay stays in place, so paging goes by id.
    rows = await store.rejected(limit=limit, reason=reason, source=source)
    results = [await replay(store, pipeline, kept) for kept in rows]
    counts = {kind: 0 for kind in ("accepted", "refused", "truncated")}
    for result in results:
        counts[result["outcome"]] += 1
    return web.json_response({**counts, "results": results})


def _filters(request: web.Request) -> tuple[str | None, str | None]:
    reason = request.query.get("reason") or None
    source = request.query.get("source") or None
    if source is not None and source not in SOURCES:
        raise invalid_parameter("source", f"source must be one of {', '.join(sorted(SOURCES))}")
    return reason, source


def _view(kept: RejectedCallback) -> dict[str, Any]:
    return {
        "id": kept.id,
        "received_at": kept.received_at,
        "source": kept.source,
        "reason": kept.reason,
        "message": kept.message,
        "content_type": kept.content_type,
        "body_bytes": kept.body_bytes,
        "truncated": kept.body_bytes > len(kept.body),
        # For reading; bytes that are not UTF-8 show as U+FFFD (a replay uses the bytes kept).
        "body": kept.body.decode(errors="replace"),
    }
