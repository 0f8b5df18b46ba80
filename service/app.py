"""create_app(settings): routes, typed keys, and every resource's cleanup_ctx in start order."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from service.api import health, metrics
from service.api.middleware import request_context
from service.appkeys import DB, HTTP, METRICS, READINESS, SETTINGS
from service.db import Database
from service.metrics import Metrics
from service.settings import Settings


async def database_ctx(app: web.Application) -> AsyncIterator[None]:
    db = await Database.open(app[SETTINGS].sqlite_path)
    app[DB] = db

    async def writable() -> tuple[bool, str]:
        async with db.transaction() as conn:
            await conn.execute("SELECT 1")
        return True, "ok"

    app[READINESS]["database"] = writable
    yield
    await db.close()


async def http_ctx(app: web.Application) -> AsyncIterator[None]:
    async with aiohttp.ClientSession() as session:
        app[HTTP] = session
        yield


def create_app(settings: Settings) -> web.Application:
    app = web.Application(
        middlewares=[request_context], client_max_size=settings.max_body_bytes
    )
    app[SETTINGS] = settings
    app[METRICS] = Metrics()
    app[READINESS] = {}
    app.cleanup_ctx.extend([database_ctx, http_ctx])
    app.add_routes(health.routes)
    app.add_routes(metrics.routes)
    return app
