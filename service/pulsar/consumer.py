"""CI events from TDMQ/Pulsar: each message goes through the event pipeline with ``source: pulsar``.

Outcomes of one delivery:
- stored (new or duplicate): acknowledged, and only then: ``EventPipeline.ingest`` returns after
  the commit, so an event is durable before the broker forgets the message;
- a transient failure (the database, shutdown): negatively acknowledged, so the broker delivers it
  again after ``CIRELAY_PULSAR_REDELIVERY_DELAY_SECONDS``; the worker also pauses (backoff), so a
  sick database slows consumption instead of spinning through the backlog;
- refused (``EventRejected``: it can never parse): delivered again up to
  ``CIRELAY_PULSAR_MAX_REDELIVERIES`` times, so another replica (say, a newer version during a
  rolling deploy) may take it, then published to ``<topic>-DLQ`` and acknowledged.

The pipeline keeps a refused body and counts it (``cirelay_events_rejected_total``) when it refuses
it; a redelivery of a message this process already refused is not parsed, kept or counted again:
the same bytes give the same answer.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pulsar
import pulsar.asyncio

from service.events.pipeline import EventPipeline
from service.ingest.parse import EventRejected
from service.metrics import Metrics
from service.pulsar.deadletter import DeadLetters
from service.pulsar.messages import Outcomes, Redelivery, acknowledge, property_value
from service.settings import Settings

SOURCE = "pulsar"
REGEX_PREFIX = "re:"
CONTENT_TYPE = "content-type"
DELIVERIES = "cirelay-deliveries"  # dead-letter property: deliveries before it was given up
# Messages whose earlier deliveries failed, remembered for counting and refusals (LRU).
_REMEMBERED = 10_000

CONSUMER_TYPES = {
    "Shared": pulsar.ConsumerType.Shared,
    "Failover": pulsar.ConsumerType.Failover,
    "Exclusive": pulsar.ConsumerType.Exclusive,
    "KeyShared": pulsar.ConsumerType.KeyShared,
}


@dataclass(frozen=True)
class Topics:
    """What to subscribe to: a list of topic names, or one regex pattern."""

    names: tuple[str, ...] = ()
    pattern: str | None = None


def parse_topics(value: str) -> Topics:
    """``CIRELAY_PULSAR_EVENTS_TOPIC``: comma-separated names, or ``re:<pattern>``."""
    value = value.strip()
    if value.startswith(REGEX_PREFIX):
        pattern = value[len(REGEX_PREFIX) :].strip()
        if not pattern:
            raise ValueError("empty topic pattern after 're:'")
        return Topics(pattern=pattern)
    names = tuple(name.strip() for name in value.split(",") if name.strip())
    if not names:
        raise ValueError("no topic named")
    return Topics(names=names)


@dataclass(slots=True)
class _Failure:
    deliveries: int = 0
    refusal: tuple[str, str] | None = None  # (reason, message) once this process refused it


class EventConsumer:
    def __init__(
        self,
        client: Any,
        pipeline: EventPipeline,
        dead_letters: DeadLetters,
        settings: Settings,
        topics: Topics,
        metrics: Metrics,
        *,
        on_new_events: Callable[[], None] = lambda: None,
    ) -> None:
        self._client = client
        self._pipeline = pipeline
        self._dead_letters = dead_letters
        self._settings = settings
        self._topics = topics
        self._on_new_events = on_new_events
        self._failures: collections.OrderedDict[tuple[str, str], _Failure] = (
            collections.OrderedDict()
        )
        self._outcomes = Outcomes(metrics, "events")
        self._redelivery = Redelivery("events", self._outcomes)

    async def subscribe(self) -> Any:
        settings = self._settings
        topic: str | list[str]
        if self._topics.pattern is not None:
            topic = self._topics.pattern
        elif len(self._topics.names) == 1:
            topic = self._topics.names[0]
        else:
            topic = list(self._topics.names)
        return await self._client.subscribe(
            topic,
            settings.pulsar_subscription,
            consumer_type=CONSUMER_TYPES[settings.pulsar_subscription_type],
            receiver_queue_size=settings.pulsar_receiver_queue_size,
            negative_ack_redelivery_delay_ms=int(settings.pulsar_redelivery_delay_seconds * 1000),
            # A new subscription starts at the oldest message: events published before cirelay
            # first subscribed are not skipped. An existing subscription resumes where it was.
            initial_position=pulsar.InitialPosition.Earliest,
            is_pattern_topic=self._topics.pattern is not None,
        )

    async def handle(self, consumer: Any, message: Any) -> None:
        # Only a message that failed before has a record; the common case skips building its key.
        key = _key(message) if self._failures else None
        failure = self._failures.get(key) if key is not None else None
        refusal = failure.refusal if failure is not None else None
        if refusal is None:
            try:
                new_events = await self._ingest(message)
            except EventRejected as exc:
                refusal = (exc.reason, exc.message)
            except Exception as exc:  # database, shutdown: the message is fine, try again later
                self._remember(message, failure, None)
                await self._redelivery.later(consumer, message, exc)
                return
            else:
                self._redelivery.succeeded()
                if failure is not None:
                    self._failures.pop(_key(message), None)
                await acknowledge(consumer, message)
                self._outcomes.acked.inc()
                if new_events:
                    self._on_new_events()
                return
        deliveries = self._remember(message, failure, refusal)
        if deliveries <= self._settings.pulsar_max_redeliveries:
            await consumer.negative_acknowledge(message)
            self._outcomes.refused.inc()
            return
        reason, text = refusal
        try:
            await self._dead_letters.publish(
                message, reason, text, extra={DELIVERIES: str(deliveries)}
            )
        except pulsar.asyncio.PulsarException as exc:
            await self._redelivery.later(consumer, message, exc)
            return
        self._failures.pop(_key(message), None)
        await acknowledge(consumer, message)
        self._outcomes.dead_lettered.inc()

    async def _ingest(self, message: Any) -> int:
        body: bytes = message.data()
        content_type = property_value(message.properties(), CONTENT_TYPE) or ""
        limit = self._settings.max_body_bytes
        if len(body) > limit:
            text = f"message body exceeds {limit} bytes"
            await self._pipeline.reject(
                body, content_type, source=SOURCE, reason="body_too_large", message=text
            )
            raise EventRejected("body_too_large", text)
        result = await self._pipeline.ingest(body, content_type, source=SOURCE)
        return result.new_events

    def _remember(
        self, message: Any, failure: _Failure | None, refusal: tuple[str, str] | None
    ) -> int:
        """Record one more failed delivery of ``message``; returns its deliveries so far."""
        # The broker counts redeliveries for Shared/Key_Shared only; our own count covers the rest.
        seen = failure.deliveries if failure is not None else 0
        deliveries = max(int(message.redelivery_count()), seen) + 1
        key = _key(message)
        self._failures[key] = _Failure(deliveries, refusal)
        self._failures.move_to_end(key)
        if len(self._failures) > _REMEMBERED:
            self._failures.popitem(last=False)
        return deliveries


def _key(message: Any) -> tuple[str, str]:
    return message.topic_name(), str(message.message_id())
