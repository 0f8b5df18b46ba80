"""create_app(settings): routes, typed keys, and every resource's cleanup_ctx in start order."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import AsyncIterator

import aiohttp
import structlog
from aiohttp import web

from service.api import callbacks, deliveries, docs, events, health, jobs, metrics, rejected
from service.api.middleware import request_context
from service.appkeys import (
    CI_CLIENT,
    EVENT_PIPELINE,
    EVENT_STORE,
    HTTP,
    METRICS,
    QUEUE,
    RATE_LIMITER,
    READINESS,
    SETTINGS,
    STORAGE,
    SUBMITTER,
)
from service.ci.client import CIClient
from service.ci.signing import Credentials
from service.events.pipeline import EventPipeline
from service.events.reconcile import Reconciler
from service.intake import preinitialise_metrics
from service.metrics import Metrics
from service.pulsar.context import pulsar_ctx
from service.queue.gauges import refresh_queue_gauges
from service.ratelimit import RateLimiter
from service.retention import Retainer
from service.settings import Settings
from service.storage import open_storage
from service.submitter import Submitter, preinitialise_outcomes
from service.webhooks.context import webhooks_ctx

log = structlog.get_logger(__name__)

# How often the queue gauges are recomputed from the database.
QUEUE_GAUGE_SECONDS = 5.0


async def storage_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    storage = await open_storage(
        settings.database_url,
        pool_size=settings.database_pool_size,
        # Outbox entries only when a publisher drains them; otherwise they would pile up forever.
        outbox=bool(settings.pulsar_url and settings.pulsar_output_topic),
        rejected_body_max_bytes=settings.rejected_body_max_bytes,
        rejected_max_count=settings.rejected_max_count,
        rejected_max_bytes=settings.rejected_max_bytes,
    )
    app[STORAGE] = storage
    app[QUEUE] = storage.queue
    app[EVENT_STORE] = storage.events

    async def writable() -> tuple[bool, str]:
        await storage.ping()
        return True, "ok"

    app[READINESS]["database"] = writable
    yield
    # In-flight requests finished before cleanup began; commit what they handed over.
    await storage.close()


async def http_ctx(app: web.Application) -> AsyncIterator[None]:
    async with aiohttp.ClientSession() as session:
        app[HTTP] = session
        yield


async def queue_gauges_ctx(app: web.Application) -> AsyncIterator[None]:
    queue = app[QUEUE]
    metrics = app[METRICS]
    preinitialise_metrics(metrics)
    preinitialise_outcomes(metrics)

    async def refresh() -> None:
        while True:
            try:
                await refresh_queue_gauges(queue, metrics, now=time.time())
            except Exception:  # a failed refresh leaves stale gauges, not a dead task
                log.exception("queue_gauges_failed")
            await asyncio.sleep(QUEUE_GAUGE_SECONDS)

    task = asyncio.create_task(refresh(), name="queue-gauges")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def ci_client_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    app[CI_CLIENT] = CIClient(
        app[HTTP],
        Credentials(settings.ci_secret_id, settings.ci_secret_key, settings.ci_token),
        endpoint=settings.ci_endpoint,
        timeout=settings.ci_timeout_seconds,
        metrics=app[METRICS],
    )
    app[RATE_LIMITER] = RateLimiter(settings.ci_rate_limit, settings.ci_concurrency)

    async def credentials_present() -> tuple[bool, str]:
        missing = [
            name
            for name in ("CIRELAY_CI_SECRET_ID", "CIRELAY_CI_SECRET_KEY")
            if not getattr(settings, name.removeprefix("CIRELAY_").lower())
        ]
        return (False, f"missing {', '.join(missing)}") if missing else (True, "ok")

    app[READINESS]["ci_credentials"] = credentials_present
    yield


async def submitter_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    if not settings.submitter_enabled:
        yield
        return
    submitter = Submitter(app[QUEUE], app[CI_CLIENT], app[RATE_LIMITER], settings, app[METRICS])
    app[SUBMITTER] = submitter
    submitter.start()
    yield
    # Runs on SIGTERM (aiohttp cleanup): stop claiming, let in-flight work finish, release the rest.
    await submitter.stop(settings.shutdown_grace_seconds)


async def events_ctx(app: web.Application) -> AsyncIterator[None]:
    app[EVENT_PIPELINE] = EventPipeline(
        app[EVENT_STORE],
        app[QUEUE],
        app[METRICS],
        max_depth=app[SETTINGS].max_xml_depth,
        max_events=app[SETTINGS].max_events_per_callback,
    )
    yield
    app[EVENT_PIPELINE].close()


async def reconcile_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    if not settings.reconcile_enabled:
        yield
        return
    reconciler = Reconciler(
        app[EVENT_PIPELINE],
        app[CI_CLIENT],
        app[STORAGE].leases,
        app[METRICS],
        interval=settings.reconcile_seconds,
        grace=settings.reconcile_grace_seconds,
        concurrency=settings.ci_concurrency,
    )
    task = asyncio.create_task(reconciler.run(), name="reconciler")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def retention_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    if settings.retention_days <= 0:
        yield
        return
    storage = app[STORAGE]
    retainer = Retainer(
        storage.retention,
        storage.leases,
        app[METRICS],
        days=settings.retention_days,
        deliveries=storage.deliveries,
    )
    task = asyncio.create_task(retainer.run(), name="retention")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def frozen_heap_ctx(app: web.Application) -> AsyncIterator[None]:
    # What start-up made (modules, routes, connections) lives as long as the app: kept out of the
    # collector's generations, a full collection under load walks only what requests made.
    gc.freeze()
    yield
    gc.unfreeze()


def create_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[request_context], client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    app[METRICS] = Metrics()
    app[READINESS] = {}
    app.cleanup_ctx.extend(
        [
            storage_ctx,
            http_ctx,
            queue_gauges_ctx,
            events_ctx,
            webhooks_ctx,
            ci_client_ctx,
            submitter_ctx,
            reconcile_ctx,
            retention_ctx,
            pulsar_ctx,
            frozen_heap_ctx,
        ]
    )
    if settings.admin_port:
        # Probes and metrics on the management listener only (create_admin_app); /healthz stays
        # here too: it says nothing but "alive", and the image's HEALTHCHECK uses this port.
        app.add_routes([web.get("/healthz", health.healthz)])
    else:
        app.add_routes(health.routes)
        app.add_routes(metrics.routes)
    app.add_routes(docs.routes)
    app.add_routes(jobs.routes)
    app.add_routes(callbacks.routes)
    app.add_routes(events.routes)
    app.add_routes(rejected.routes)
    app.add_routes(deliveries.routes)
    return app


def create_admin_app(app: web.Application) -> web.Application:
    """The management listener's app (``CIRELAY_ADMIN_PORT``): ``/healthz``, ``/readyz`` and
    ``/metrics`` of ``app``, whose settings, metrics and readiness checks it shares."""
    admin = web.Application(middlewares=[request_context])
    admin[SETTINGS] = app[SETTINGS]
    admin[METRICS] = app[METRICS]
    admin[READINESS] = app[READINESS]  # filled in as app's resources start
    admin.add_routes(health.routes)
    admin.add_routes(metrics.routes)
    return admin
