"""Request id, bearer auth on /v1, JSON errors for everything, per-route metrics."""

from __future__ import annotations

import functools
import hmac
import os
import time
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web
from prometheus_client import Counter, Histogram

from service.api.errors import ApiError, error_response
from service.appkeys import METRICS, SETTINGS
from service.storage import StorageUnavailable

log = structlog.get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Routes that authenticate by their own token in the path instead of the bearer token.
_PUBLIC_PREFIXES = ("/v1/callbacks/",)

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
}


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    # 128 random bits in hex, as uuid4().hex gave, for a quarter of its cost.
    request_id = request.headers.get("X-Request-Id") or os.urandom(16).hex()
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id)
    metrics = request.app[METRICS]
    started = time.perf_counter()
    route = _route_name(request)
    status = 500
    try:
        response = await _render_errors(request, handler)
        status = response.status
        response.headers["X-Request-Id"] = request_id
        return response
    finally:
        _requests_child(metrics.http_requests, request.method, route, status).inc()
        _duration_child(metrics.http_request_duration, request.method, route).observe(
            time.perf_counter() - started
        )


# A label lookup costs more than the increment it serves, and the label sets are few: keep the
# children. Bounded, so odd methods from clients only evict each other.
@functools.lru_cache(maxsize=1024)
def _requests_child(metric: Counter, method: str, route: str, status: int) -> Counter:
    return metric.labels(method, route, str(status))


@functools.lru_cache(maxsize=1024)
def _duration_child(metric: Histogram, method: str, route: str) -> Histogram:
    return metric.labels(method, route)


async def _render_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        _authenticate(request)
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message, exc.details)
    except StorageUnavailable as exc:
        # The database is down or restarting: not the caller's fault, and nothing was
        # acknowledged, so the caller tries again (a 500 would say the request was wrong).
        log.warning("storage_unavailable", path=request.path, error=str(exc))
        return error_response(503, "unavailable", "storage is unavailable right now; try again")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        response = error_response(exc.status, code, exc.reason)
        if "Allow" in exc.headers:  # RFC 9110: a 405 names the methods the resource supports
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except Exception:
        log.exception("unhandled_error", path=request.path)
        return error_response(500, "internal_error", "internal error")


def _authenticate(request: web.Request) -> None:
    path = request.path
    if not path.startswith("/v1/") or path.startswith(_PUBLIC_PREFIXES):
        return
    expected = request.app[SETTINGS].api_token
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if (
        scheme.lower() != "bearer"
        or not expected
        or not hmac.compare_digest(token.strip().encode(), expected.encode())
    ):
        raise ApiError(401, "unauthorized", "missing or wrong bearer token")


def _route_name(request: web.Request) -> str:
    # The route's template, never the concrete path: keeps the label set small.
    info = request.match_info.route.resource
    if info is None:
        return "unmatched"
    return info.canonical
