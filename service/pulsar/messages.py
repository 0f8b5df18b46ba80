"""What the consumers of every topic do alike: read properties, acknowledge, ask for redelivery."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pulsar.asyncio
import structlog

from service.backoff import full_jitter
from service.metrics import Metrics

log = structlog.get_logger(__name__)

# Pause of a worker after a transient failure: full jitter, doubling per consecutive failure.
PAUSE_BASE_SECONDS = 0.1
PAUSE_CAP_SECONDS = 5.0


OUTCOMES = ("acked", "retried", "refused", "dead_lettered")


class Outcomes:
    """What became of each delivery of one component's messages: exactly one outcome each."""

    def __init__(self, metrics: Metrics, component: str) -> None:
        # Children made once, at 0, so every series exists before its first message.
        self.acked, self.retried, self.refused, self.dead_lettered = (
            metrics.pulsar_messages.labels(component, outcome) for outcome in OUTCOMES
        )


def property_value(properties: Mapping[str, str], name: str) -> str | None:
    """The value of property ``name`` compared case-insensitively; ``None`` when absent or empty."""
    wanted = name.lower()
    for key, value in properties.items():
        if key.lower() == wanted:
            return value or None
    return None


async def acknowledge(consumer: Any, message: Any) -> None:
    try:
        await consumer.acknowledge(message)
    except pulsar.asyncio.PulsarException as exc:
        # The work is committed; the broker delivers the message again and the handler
        # recognises it (a stored event, a job's idempotency key).
        log.warning("pulsar_ack_failed", topic=message.topic_name(), error=str(exc))


class Redelivery:
    """Negative acknowledgement after a transient failure (the database, shutdown), then a pause
    of the worker that grows while failures follow each other, so a sick dependency slows
    consumption instead of spinning through the backlog."""

    def __init__(self, component: str, outcomes: Outcomes) -> None:
        self._component = component
        self._outcomes = outcomes
        self._streak = 0

    def succeeded(self) -> None:
        self._streak = 0

    async def later(self, consumer: Any, message: Any, error: BaseException) -> None:
        self._streak += 1
        pause = full_jitter(self._streak, base=PAUSE_BASE_SECONDS, cap=PAUSE_CAP_SECONDS)
        log.warning(
            "pulsar_redelivery",
            component=self._component,
            topic=message.topic_name(),
            error=f"{type(error).__name__}: {error}",
            pause=round(pause, 3),
        )
        await consumer.negative_acknowledge(message)
        self._outcomes.retried.inc()
        await asyncio.sleep(pause)
