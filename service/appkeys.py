"""Typed keys of the objects an app holds; each is set by the cleanup_ctx that owns its lifetime."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web

from service.db import Database
from service.metrics import Metrics
from service.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", Metrics)
DB = web.AppKey("db", Database)
HTTP = web.AppKey("http", aiohttp.ClientSession)
READINESS = web.AppKey(
    "readiness", dict[str, Callable[[], Awaitable[tuple[bool, str]]]]
)
