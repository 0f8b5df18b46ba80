"""`POST /v1/callbacks/{token}`: CI's job callbacks, answered 2xx once their events are durable.

The path token authenticates the caller (CI documents no signature): a per-job token names our job,
the static ``CIRELAY_CALLBACK_TOKEN`` serves workflows and queues configured by hand, anything else
is 404. Refused bodies answer 4xx with the rejection reason as ``code`` and are kept for replay.
"""

from __future__ import annotations

import functools
import hmac

import orjson
from aiohttp import web

from service.api.deadline import body_deadline
from service.api.errors import ApiError
from service.appkeys import EVENT_PIPELINE, SETTINGS
from service.ingest.parse import EventRejected
from service.storage import StorageUnavailable
from service.tokens import job_id_from_token

routes = web.RouteTableDef()

SOURCE = "http"

# A batch's callbacks all carry its job's token: verify each distinct token once. Pure, so a
# cached answer is the answer; bounded, so random tokens only evict each other.
_job_for_token = functools.lru_cache(maxsize=4096)(job_id_from_token)


@routes.post("/v1/callbacks/{token}")
async def receive_callback(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    token = request.match_info["token"]
    job_id = _job_for(settings.callback_keys, token)
    if job_id is None and not _is_static_token(token, settings.callback_token):
        raise ApiError(404, "not_found", "no such callback URL")
    pipeline = request.app[EVENT_PIPELINE]
    content_type = request.headers.get("Content-Type", "")
    async with body_deadline(request):
        body, received = await _read_bounded(
            request, settings.max_body_bytes, settings.rejected_body_max_bytes
        )
    try:
        if received is not None:
            message = f"body exceeds {settings.max_body_bytes} bytes"
            await pipeline.reject(
                body,
                content_type,
                source=SOURCE,
                reason="body_too_large",
                message=message,
                size=received,
            )
            raise ApiError(413, "body_too_large", message)
        try:
            result = await pipeline.ingest(body, content_type, source=SOURCE, cirelay_job_id=job_id)
        except EventRejected as exc:
            raise ApiError(400, exc.reason, exc.message) from None
    except StorageUnavailable:
        # Not the caller's fault: a 503 asks CI (or whoever posts) to deliver again later.
        raise ApiError(503, "unavailable", "events cannot be stored right now") from None
    ack = {"event_ids": result.event_ids, "new": result.new_events, "duplicates": result.duplicates}
    return web.Response(body=orjson.dumps(ack), content_type="application/json")


def _job_for(keys: tuple[bytes, ...], token: str) -> str | None:
    # The signing key first: during a rotation, only tokens of older jobs need the others.
    for key in keys:
        job_id = _job_for_token(key, token)
        if job_id is not None:
            return job_id
    return None


def _is_static_token(token: str, static: str) -> bool:
    return bool(static) and hmac.compare_digest(token.encode(), static.encode())


async def _read_bounded(request: web.Request, limit: int, keep: int) -> tuple[bytes, int | None]:
    """(body, None) for a whole body; past ``limit`` bytes reading stops with the first ``keep``
    bytes and the size received: the declared Content-Length, else what was read."""
    declared = request.content_length
    too_large = declared is not None and declared > limit
    body = bytearray()
    while chunk := await request.content.readany():
        body += chunk
        if (too_large and len(body) >= keep) or len(body) > limit:
            return bytes(body[:keep]), declared if too_large else len(body)
    return bytes(body), declared if too_large else None
