"""Request id, bearer auth on /v1, JSON errors for everything, per-route metrics.

Input never earns a 5xx: headers that are not UTF-8 are refused before any handler reads them, and
an exception of the kinds that only input raises (``ValueError``, ``UnicodeError``,
``OverflowError``, ``RecursionError``) that escaped a handler becomes 400 ``invalid_input``, logged
with its traceback so the handler can be taught a precise answer. The database being unavailable is
503; only a fault of our own is a 500.
"""

from __future__ import annotations

import functools
import hmac
import os
import time
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import Counter, Histogram

from service.api.errors import ApiError, error_response
from service.appkeys import METRICS, SETTINGS
from service.redact import redact_path
from service.storage import StorageUnavailable

log = structlog.get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Routes that authenticate by their own token in the path instead of the bearer token.
_PUBLIC_PREFIXES = ("/v1/callbacks/",)

# Exceptions only malformed input raises in our code (int/str conversions, codecs, deep nesting).
_INPUT_ERRORS = (ValueError, UnicodeError, OverflowError, RecursionError)
# What reading the body raises once the client hung up (reset, or a body cut short).
_HANG_UPS = (ConnectionError, HttpProcessingError)
# nginx's "client closed request": counted apart from the server's own errors.
CLIENT_CLOSED_REQUEST = 499

_MAX_REQUEST_ID = 128

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
    request_id = _request_id(request.headers.get("X-Request-Id"))
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


def _request_id(given: str | None) -> str:
    # A caller's id is echoed in a header and logged: only short printable ASCII is taken as is.
    if given and len(given) <= _MAX_REQUEST_ID and given.isascii() and given.isprintable():
        return given
    # 128 random bits in hex, as uuid4().hex gave, for a quarter of its cost.
    return os.urandom(16).hex()


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
        _check_headers(request)
        _authenticate(request)
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message, exc.details)
    except StorageUnavailable as exc:
        # The database is down or restarting: not the caller's fault, and nothing was
        # acknowledged, so the caller tries again (a 500 would say the request was wrong).
        log.warning("storage_unavailable", path=redact_path(request.path), error=str(exc))
        return error_response(503, "unavailable", "storage is unavailable right now; try again")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        response = error_response(exc.status, code, exc.reason)
        if "Allow" in exc.headers:  # RFC 9110: a 405 names the methods the resource supports
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except _HANG_UPS as exc:
        if not _client_gone(request):
            raise
        # The client's doing, not ours: no traceback, and a status of its own in the metrics.
        log.info("client_disconnected", path=redact_path(request.path), error=type(exc).__name__)
        return web.Response(status=CLIENT_CLOSED_REQUEST)
    except _INPUT_ERRORS as exc:
        log.warning("input_error", path=redact_path(request.path), exc_info=True)
        return error_response(400, "invalid_input", f"input refused: {type(exc).__name__}")
    except Exception:
        log.exception("unhandled_error", path=redact_path(request.path))
        return error_response(500, "internal_error", "internal error")


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def _check_headers(request: web.Request) -> None:
    # aiohttp keeps bytes that are not UTF-8 as lone surrogates, which no encoder, database or
    # comparison downstream accepts. ASCII, the common case, costs one C-level scan per value.
    for name, value in request.headers.items():
        if not value.isascii():
            try:
                value.encode()
            except UnicodeEncodeError:
                message = f"header {name} is not valid UTF-8"
                raise ApiError(
                    400, "invalid_header", message, [{"path": f"header.{name}", "message": message}]
                ) from None


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
