"""``pulsar_ctx``: the app's Pulsar side, on when ``CIRELAY_PULSAR_URL`` is set.

Starts after the database, queue and event contexts (it feeds them) and so stops before them:
consumers stop receiving and finish what they hold, the publisher stops, then the client closes.
Each part runs only when its topic is configured: CI events, the outbox, batch-job intake.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from service.appkeys import (
    EVENT_PIPELINE,
    EVENT_STORE,
    METRICS,
    QUEUE,
    READINESS,
    SETTINGS,
    STORAGE,
)
from service.pulsar.connection import PulsarConnection
from service.pulsar.consumer import EventConsumer, parse_topics
from service.pulsar.deadletter import DeadLetters
from service.pulsar.intake import JobIntake
from service.pulsar.publisher import OutboxPublisher
from service.pulsar.subscription import SubscriptionRunner
from service.settings import SettingsError, env_name

log = structlog.get_logger(__name__)


async def pulsar_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    if not settings.pulsar_url:
        yield
        return
    topics = None
    try:
        if settings.pulsar_events_topic:
            topics = parse_topics(settings.pulsar_events_topic)
    except ValueError as exc:
        raise SettingsError(env_name("pulsar_events_topic"), str(exc)) from None
    metrics = app[METRICS]
    connection = PulsarConnection(settings, metrics)
    dead_letters = DeadLetters(connection.client)
    publisher = None
    if settings.pulsar_output_topic:
        publisher = OutboxPublisher(
            connection,
            app[EVENT_STORE],
            app[STORAGE].leases,
            settings.pulsar_output_topic,
            metrics,
        )
    runners = []
    if topics is not None:
        consumer = EventConsumer(
            connection.client,
            app[EVENT_PIPELINE],
            dead_letters,
            settings,
            topics,
            metrics,
            on_new_events=publisher.wake if publisher is not None else lambda: None,
        )
        runners.append(
            SubscriptionRunner(
                connection,
                "events",
                consumer.subscribe,
                consumer.handle,
                concurrency=settings.pulsar_consumer_concurrency,
            )
        )
    if settings.pulsar_intake_topic:
        intake = JobIntake(connection.client, app[QUEUE], dead_letters, settings, metrics)
        runners.append(
            SubscriptionRunner(
                connection,
                "intake",
                intake.subscribe,
                intake.handle,
                concurrency=settings.pulsar_consumer_concurrency,
            )
        )
    app[READINESS]["pulsar"] = connection.readiness
    connection.start()
    if publisher is not None:
        publisher.start()
    for runner in runners:
        runner.start()
    log.info(
        "pulsar_started",
        url=settings.pulsar_url,
        events=settings.pulsar_events_topic or None,
        output=settings.pulsar_output_topic or None,
        intake=settings.pulsar_intake_topic or None,
    )
    yield
    await asyncio.gather(*(runner.stop(settings.shutdown_grace_seconds) for runner in runners))
    if publisher is not None:
        await publisher.stop()
    await dead_letters.close()
    await connection.close()
