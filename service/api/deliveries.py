"""Webhook deliveries: a job's list (`GET /v1/jobs/{id}/deliveries`) and a manual redelivery
(`POST /v1/deliveries/{id}/retry`, for a `dead` delivery or to send a delivered one again)."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from service.api.errors import ApiError
from service.appkeys import QUEUE, STORAGE
from service.storage import Delivery
from service.timefmt import epoch_text

routes = web.RouteTableDef()


@routes.get("/v1/jobs/{id}/deliveries")
async def job_deliveries(request: web.Request) -> web.Response:
    job_id = request.match_info["id"]
    if await request.app[QUEUE].get(job_id) is None:
        raise ApiError(404, "job_not_found", f"no job {job_id}")
    found = await request.app[STORAGE].deliveries.for_job(job_id)
    return web.json_response({"deliveries": [delivery_view(d) for d in found]})


@routes.post("/v1/deliveries/{id}/retry")
async def retry_delivery(request: web.Request) -> web.Response:
    deliveries = request.app[STORAGE].deliveries
    delivery_id = request.match_info["id"]
    again = await deliveries.redeliver(delivery_id, now=time.time())
    if again is not None:
        return web.json_response(delivery_view(again))
    if await deliveries.get(delivery_id) is None:
        raise ApiError(404, "delivery_not_found", f"no delivery {delivery_id}")
    raise ApiError(
        409,
        "delivery_pending",
        "the delivery is pending already: it is sent when due",
        [{"state": "pending"}],
    )


def delivery_view(delivery: Delivery) -> dict[str, Any]:
    return {
        "id": delivery.id,
        "job_id": delivery.job_id,
        "event_id": delivery.event_id,
        "event_type": delivery.event_type,
        "kind": delivery.kind,
        "url": delivery.url,
        "state": delivery.state,
        "attempts": delivery.attempts,
        "last_status": delivery.last_status,
        "last_error": delivery.last_error,
        "created_at": epoch_text(delivery.created_at),
        "next_attempt_at": (
            epoch_text(delivery.next_attempt_at) if delivery.state == "pending" else None
        ),
        "delivered_at": epoch_text(delivery.delivered_at),
    }
