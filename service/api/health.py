"""Liveness (`/healthz`) and readiness (`/readyz`), each JSON naming every component's state."""

from __future__ import annotations

from aiohttp import web

from service.appkeys import READINESS

routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    components: dict[str, dict[str, object]] = {}
    for name, check in request.app[READINESS].items():
        try:
            ok, detail = await check()
        except Exception as exc:  # a failing check is an answer, not a crash
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        components[name] = {"ok": ok, "detail": detail}
    ready = all(c["ok"] for c in components.values())
    return web.json_response(
        {"status": "ready" if ready else "not_ready", "components": components},
        status=200 if ready else 503,
    )
