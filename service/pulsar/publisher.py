"""Drain the durable outbox to ``CIRELAY_PULSAR_OUTPUT_TOPIC``: every new canonical event, as JSON.

The event store marks each new event unpublished in the same statement that stores it, so an event
stored just before a crash is still published after the restart. The mark is cleared only after the
broker acknowledged its message: at least once. The message key is the event's ``job_id`` (CI's
JobId; the ``event_id`` for events without one), so Key_Shared consumers see each job's events in
order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Sequence
from typing import Any

import pulsar
import pulsar.asyncio
import structlog

from service.backoff import full_jitter
from service.events.store import EventStore
from service.metrics import Metrics
from service.pulsar.connection import PulsarConnection

log = structlog.get_logger(__name__)

NAME = "outbox"
BATCH_SIZE = 500  # below the producer's pending-message limit, so a batch never overflows it
# With nothing to publish, the outbox is looked at again after this, or at once when woken (new
# events from this process's consumer); events from other writers wait at most this long.
IDLE_POLL_SECONDS = 0.5
GAUGE_SECONDS = 1.0
RETRY_BASE_SECONDS = 0.5
RETRY_CAP_SECONDS = 30.0


def encode(event: dict[str, Any]) -> tuple[bytes, str, dict[str, str]]:
    """(body, key, properties) of the message that carries ``event``."""
    body = json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode()
    key = event.get("job_id") or event["event_id"]
    properties = {"event_id": event["event_id"], "event_type": event["event_type"]}
    return body, key, properties


def published_prefix(seqs: Sequence[int], outcomes: Sequence[BaseException | None]) -> list[int]:
    """The outbox rows to mark done: those sent before the first failure. Rows after a failed send
    are sent again, even if their own send succeeded, so a job's events are never re-published
    out of order (consumers see a duplicate, which at-least-once delivery allows anyway)."""
    done = []
    for seq, outcome in zip(seqs, outcomes, strict=True):
        if outcome is not None:
            break
        done.append(seq)
    return done


class OutboxPublisher:
    def __init__(
        self,
        connection: PulsarConnection,
        store: EventStore,
        topic: str,
        metrics: Metrics,
        *,
        batch_size: int = BATCH_SIZE,
    ) -> None:
        self._connection = connection
        self._store = store
        self._topic = topic
        self._metrics = metrics
        self._batch_size = batch_size
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        connection.expect(NAME)

    def wake(self) -> None:
        """New events were stored: look at the outbox now rather than at the next poll."""
        self._wake.set()

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run(), name="pulsar-outbox"),
            asyncio.create_task(self._watch_pending(), name="pulsar-outbox-gauge"),
        ]

    async def stop(self) -> None:
        """Stop publishing; rows not yet acknowledged by the broker stay for the next start."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        attempt = 0
        while True:
            try:
                producer = await self._connection.client.create_producer(
                    self._topic,
                    # A Key_Shared subscription routes a batch by its first key, so batches of
                    # mixed keys would break per-job order; key-based batching keeps order but
                    # with a key per job it sends one-message batches, slower than none at all.
                    batching_enabled=False,
                    block_if_queue_full=True,
                )
            except pulsar.asyncio.PulsarException as exc:
                attempt += 1
                delay = full_jitter(attempt, base=RETRY_BASE_SECONDS, cap=RETRY_CAP_SECONDS)
                self._connection.failed(NAME, f"producer failed: {exc}")
                log.warning(
                    "pulsar_producer_failed",
                    topic=self._topic,
                    error=str(exc),
                    retry_in=round(delay, 3),
                )
                await asyncio.sleep(delay)
                continue
            self._connection.attach(NAME, producer.is_connected)
            try:
                await self._drain(producer)
            except Exception as exc:  # the database: start over after a pause, never die
                attempt += 1
                delay = full_jitter(attempt, base=RETRY_BASE_SECONDS, cap=RETRY_CAP_SECONDS)
                log.warning("outbox_drain_failed", error=f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(delay)
            else:
                attempt = 0
            finally:
                self._connection.detach(NAME)
                with contextlib.suppress(pulsar.asyncio.PulsarException):
                    await producer.close()

    async def _drain(self, producer: Any) -> None:
        """Publish outbox rows as they come; returns only if the producer is closed under it."""
        failures = 0
        while True:
            batch = await self._store.outbox_batch(self._batch_size)
            if not batch:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), IDLE_POLL_SECONDS)
                self._wake.clear()
                continue
            outcomes = await asyncio.gather(
                *(self._send(producer, event) for _, event in batch), return_exceptions=True
            )
            seqs = [seq for seq, _ in batch]
            done = published_prefix(seqs, [_failure(o) for o in outcomes])
            if done:
                await self._store.outbox_done(done)
            await self._refresh_gauge()
            if len(done) == len(seqs):
                failures = 0
                continue
            error = next(o for o in outcomes if isinstance(o, BaseException))
            if isinstance(error, pulsar.asyncio.PulsarException) and error.error() in (
                pulsar.Result.AlreadyClosed,
                pulsar.Result.ProducerNotInitialized,
            ):
                return
            failures += 1
            delay = full_jitter(failures, base=RETRY_BASE_SECONDS, cap=RETRY_CAP_SECONDS)
            log.warning(
                "pulsar_publish_failed",
                topic=self._topic,
                published=len(done),
                pending=len(seqs) - len(done),
                error=str(error),
                retry_in=round(delay, 3),
            )
            await asyncio.sleep(delay)

    async def _send(self, producer: Any, event: dict[str, Any]) -> None:
        body, key, properties = encode(event)
        await producer.send(body, properties=properties, partition_key=key)

    async def _refresh_gauge(self) -> None:
        self._metrics.outbox_pending.set(await self._store.outbox_pending())

    async def _watch_pending(self) -> None:
        """Keep the gauge current also while nothing is published (the broker is away)."""
        while True:
            try:
                await self._refresh_gauge()
            except Exception as exc:  # a failed read leaves the gauge stale, not a dead task
                log.warning("outbox_gauge_failed", error=f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(GAUGE_SECONDS)


def _failure(outcome: object) -> BaseException | None:
    return outcome if isinstance(outcome, BaseException) else None
