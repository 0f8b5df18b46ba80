"""Dead-letter topics: a refused message is published, whole, to ``<its topic>-DLQ`` before it is
acknowledged, so it is kept for inspection and replay instead of lost.

cirelay publishes these itself rather than using the client's DeadLetterPolicy: that policy counts
every negative acknowledgement (so a database outage would dead-letter good events) and relies on
redelivery counts the broker keeps only for Shared and Key_Shared subscriptions.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Mapping
from typing import Any

import pulsar.asyncio
import structlog

log = structlog.get_logger(__name__)

SUFFIX = "-DLQ"
# Properties cirelay adds to a dead letter; the original message's own properties are kept too.
REASON = "cirelay-reason"
MESSAGE = "cirelay-message"
SOURCE_TOPIC = "cirelay-source-topic"
SOURCE_MESSAGE_ID = "cirelay-source-message-id"

_PARTITION = re.compile(r"-partition-\d+$")
# Properties travel in every message's metadata: a refusal's free text past this is cut.
_PROPERTY_LIMIT = 4096


def dead_letter_topic(topic: str) -> str:
    """``<topic>-DLQ`` for the topic a message came from (a partition's, of its whole topic)."""
    return _PARTITION.sub("", topic) + SUFFIX


def clip(text: str) -> str:
    return text if len(text) <= _PROPERTY_LIMIT else text[: _PROPERTY_LIMIT - 1] + "…"


class DeadLetters:
    def __init__(self, client: Any) -> None:
        self._client = client
        self._producers: dict[str, Any] = {}
        self._lock = asyncio.Lock()

    async def publish(
        self, message: Any, reason: str, text: str, *, extra: Mapping[str, str] | None = None
    ) -> None:
        """Publish ``message`` (body, key, properties) to its dead-letter topic with ``reason``,
        ``text`` (clipped) and ``extra`` properties. Raises ``PulsarException``."""
        topic = dead_letter_topic(message.topic_name())
        properties: dict[str, str] = dict(message.properties())
        properties.update(
            {
                REASON: reason,
                MESSAGE: clip(text),
                SOURCE_TOPIC: message.topic_name(),
                SOURCE_MESSAGE_ID: str(message.message_id()),
                **(extra or {}),
            }
        )
        producer = await self._producer(topic)
        key = message.partition_key()
        await producer.send(message.data(), properties=properties, partition_key=key or None)
        log.info("pulsar_dead_lettered", topic=topic, reason=reason)

    async def _producer(self, topic: str) -> Any:
        async with self._lock:
            producer = self._producers.get(topic)
            if producer is None:
                # Dead letters are rare: no batching, so each send is on the broker when it returns.
                producer = await self._client.create_producer(topic, batching_enabled=False)
                self._producers[topic] = producer
            return producer

    async def close(self) -> None:
        producers, self._producers = list(self._producers.values()), {}
        for producer in producers:
            with contextlib.suppress(pulsar.asyncio.PulsarException):
                await producer.close()
