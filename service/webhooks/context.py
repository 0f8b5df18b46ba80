"""The webhook machinery's lifetime in the app: fan-out, dispatcher, gauges, its own HTTP client.

The dispatcher's client resolves through ``GuardedResolver`` and follows no redirects, so no
delivery reaches a refused address; it is not the CI client's session, which talks to a trusted
endpoint (and may legitimately be on loopback).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import aiohttp
import structlog
from aiohttp import web

from service.appkeys import EVENT_PIPELINE, METRICS, SETTINGS, STORAGE, WEBHOOK_POLICY
from service.webhooks.dispatcher import DispatchConfig, Dispatcher, refresh_gauges
from service.webhooks.fanout import CallbackBodies, FanOut, JobCallbacks
from service.webhooks.ssrf import AddressPolicy, GuardedResolver

log = structlog.get_logger(__name__)

GAUGE_SECONDS = 5.0
# Other replicas' events are fanned out, and their deliveries picked up, at least this often.
POLL_SECONDS = 1.0


async def webhooks_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    policy = AddressPolicy(settings.webhook_networks)
    app[WEBHOOK_POLICY] = policy
    if not settings.webhook_enabled:
        yield
        return
    storage, metrics = app[STORAGE], app[METRICS]
    callbacks = JobCallbacks(storage.queue)
    pipeline = app[EVENT_PIPELINE]
    # The caller's CallBack is ours to serve only when CI calls us instead (a public URL is set);
    # otherwise CI calls it directly.
    if settings.public_url:
        pipeline.bodies = CallbackBodies(storage.deliveries, callbacks)
    if settings.public_url and not settings.webhook_keys:
        # Not a fault: CI's own callbacks are unsigned too, so a CallBack handler expects none.
        log.info("webhooks_unsigned", reason="CIRELAY_WEBHOOK_SECRET is not set")
    connector = aiohttp.TCPConnector(
        resolver=GuardedResolver(policy), limit=settings.webhook_concurrency
    )
    async with aiohttp.ClientSession(connector=connector) as session:
        dispatcher = Dispatcher(
            storage.deliveries,
            session,
            DispatchConfig(
                keys=settings.webhook_keys,
                schedule=settings.webhook_schedule,
                policy=policy,
                concurrency=settings.webhook_concurrency,
                per_destination=settings.webhook_destination_concurrency,
                connect_timeout=settings.webhook_connect_timeout_seconds,
                timeout=settings.webhook_timeout_seconds,
                breaker_failures=settings.webhook_breaker_failures,
                breaker_seconds=settings.webhook_breaker_seconds,
                poll_interval=POLL_SECONDS,
            ),
            metrics,
        )
        fanout = FanOut(
            storage.events,
            storage.deliveries,
            storage.leases,
            callbacks,
            subscriptions=settings.webhook_subscriptions,
            callbacks_enabled=bool(settings.public_url),
            interval=POLL_SECONDS,
            clock=time.time,
            on_new=dispatcher.wake.notify,
        )
        pipeline.on_new.append(fanout.wake.notify)

        async def gauges() -> None:
            while True:
                try:
                    await refresh_gauges(storage.deliveries, metrics, now=time.time())
                except Exception:  # stale gauges, not a dead task
                    log.exception("webhook_gauges_failed")
                await asyncio.sleep(GAUGE_SECONDS)

        tasks = [
            _task(dispatcher.run(), "webhook-dispatcher"),
            _task(gauges(), "webhook-gauges"),
        ]
        # With no subscription and no CallBack to serve, no event owes anything: fan-out starts
        # (and its position with it) the first time one may.
        if settings.webhook_subscriptions or settings.public_url:
            tasks.append(_task(fanout.run(), "webhook-fanout"))
        yield
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _task(coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
    return asyncio.create_task(coro, name=name)
