"""What happens around every CI call: request id, injected faults, authentication, error XML."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from service.emulator.auth import authenticate, parse_host
from service.emulator.keys import CLOCK, CREDENTIALS, FAULTS, REQUEST_ID, STATS, TARGET
from service.emulator.responses import CIError, error_answer, new_request_id

log = structlog.get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Unauthenticated: the readiness probe and the emulator-only control/statistics routes.
_PUBLIC_PATHS = ("/",)
_PUBLIC_PREFIX = "/_emulator/"


@web.middleware
async def ci_calls(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in _PUBLIC_PATHS or request.path.startswith(_PUBLIC_PREFIX):
        return await handler(request)
    app = request.app
    rid = request[REQUEST_ID] = new_request_id()
    stats, faults = app[STATS], app[FAULTS]
    stats.requests += 1
    if faults.latency_seconds > 0:
        stats.requests_delayed += 1
        await asyncio.sleep(faults.latency_seconds)
    try:
        fault = faults.before()
        if fault is not None:
            raise fault
        _admit(request)
        response = await handler(request)
        lost = faults.after()
        if lost is not None:
            raise lost
        return response
    except CIError as exc:
        log.info("emulator_refused", path=request.path, status=exc.status, code=exc.code)
        return error_answer(exc, rid)
    except web.HTTPException as exc:
        if exc.status == 405:
            error = CIError(405, "MethodNotAllowed", f"{request.method} is not allowed here")
        elif exc.status == 413:
            error = CIError(413, "EntityTooLarge", "the request body is too large")
        elif exc.status == 404:
            api = f"{request.method} {request.path}"
            error = CIError(404, "ResourceNotFound", f"no such API: {api}")
        else:
            error = CIError(exc.status, "InvalidArgument", exc.reason)
        return error_answer(error, rid)
    except Exception:
        log.exception("emulator_error", path=request.path)
        return error_answer(CIError(500, "InternalError", "internal error"), rid)


def _admit(request: web.Request) -> None:
    """Route by the signed Host's bucket, then check the signature (CI checks both)."""
    target = parse_host(request.headers.get("Host", ""))
    if target is None:
        raise CIError(
            400,
            "InvalidArgument",
            "Host must be <bucket>.ci.<region>.myqcloud.com (or the cos form the SDK sends)",
        )
    app = request.app
    authenticate(
        app[CREDENTIALS],
        request.method,
        request.path,
        request.query,
        request.headers,
        now=int(app[CLOCK]()),
    )
    request[TARGET] = target
