"""Typed keys of the objects an app holds; each is set by the cleanup_ctx that owns its lifetime."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web

from service.ci.client import CIClient
from service.db import Database
from service.events.pipeline import EventPipeline
from service.events.store import EventStore
from service.metrics import Metrics
from service.queue import JobQueue
from service.ratelimit import RateLimiter
from service.settings import Settings
from service.submitter import Submitter

SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", Metrics)
DB = web.AppKey("db", Database)
HTTP = web.AppKey("http", aiohttp.ClientSession)
READINESS = web.AppKey("readiness", dict[str, Callable[[], Awaitable[tuple[bool, str]]]])
QUEUE = web.AppKey[JobQueue]("queue")  # a Protocol: no runtime type to pass
CI_CLIENT = web.AppKey("ci_client", CIClient)
RATE_LIMITER = web.AppKey("rate_limiter", RateLimiter)
SUBMITTER = web.AppKey("submitter", Submitter)
EVENT_STORE = web.AppKey("event_store", EventStore)
EVENT_PIPELINE = web.AppKey("event_pipeline", EventPipeline)
