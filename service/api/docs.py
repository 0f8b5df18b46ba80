"""`GET /openapi.json`: the checked-in OpenAPI document, served as is."""

from __future__ import annotations

from importlib.resources import files

from aiohttp import web

routes = web.RouteTableDef()

_SPEC = files("service").joinpath("openapi.json").read_bytes()


@routes.get("/openapi.json")
async def openapi(_: web.Request) -> web.Response:
    return web.Response(body=_SPEC, content_type="application/json")
