"""Keep one subscription alive and feed its messages to a handler, a bounded number at a time.

Concurrency is ``concurrency`` worker tasks, each receiving one message and handling it to the
end (ack or nack) before taking the next; with the consumer's receiver queue this bounds the
messages held in memory, and a slow handler slows receiving: back-pressure reaches the broker, which
keeps the rest. The C++ client reconnects a live consumer by itself; this loop only re-subscribes
when the consumer itself is gone (closed, refused), after a backoff, and at start-up until the
broker answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable
from typing import Any

import pulsar.asyncio
import structlog

from service.backoff import full_jitter
from service.pulsar.connection import PulsarConnection, consumer_connected

log = structlog.get_logger(__name__)

# Retry delays for subscribing while the broker is unreachable or refuses.
RETRY_BASE_SECONDS = 0.5
RETRY_CAP_SECONDS = 30.0

Handler = Callable[[Any, Any], Awaitable[None]]  # (consumer, message): acks or nacks it itself


class SubscriptionRunner:
    def __init__(
        self,
        connection: PulsarConnection,
        name: str,
        subscribe: Callable[[], Awaitable[Any]],
        handle: Handler,
        *,
        concurrency: int,
    ) -> None:
        self._connection = connection
        self._name = name
        self._subscribe = subscribe
        self._handle = handle
        self._concurrency = concurrency
        self._stopping = False
        self._consuming = False
        self._receiving: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        connection.expect(name)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"pulsar-{self._name}")

    async def stop(self, grace: float) -> None:
        """Stop receiving; messages being handled may finish for ``grace`` seconds. Anything not
        acknowledged by then is redelivered by the broker once the consumer closes."""
        self._stopping = True
        for task in self._receiving:
            task.cancel()
        if self._task is None:
            return
        if not self._consuming:  # subscribing or backing off: nothing in hand to finish
            self._task.cancel()
        done, _ = await asyncio.wait({self._task}, timeout=grace)
        if not done:
            self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        attempt = 0
        while not self._stopping:
            try:
                consumer = await self._subscribe()
            except Exception as exc:  # broker away, refused, bad pattern: retry, never give up
                attempt += 1
                delay = full_jitter(attempt, base=RETRY_BASE_SECONDS, cap=RETRY_CAP_SECONDS)
                error = f"subscribe failed: {exc}"
                self._connection.failed(self._name, error)
                log.warning(
                    "pulsar_subscribe_failed",
                    component=self._name,
                    error=str(exc),
                    retry_in=round(delay, 3),
                )
                await asyncio.sleep(delay)
                continue
            attempt = 0
            log.info("pulsar_subscribed", component=self._name)
            self._connection.attach(self._name, functools.partial(consumer_connected, consumer))
            self._consuming = True
            try:
                await self._consume(consumer)
            finally:
                self._consuming = False
                self._connection.detach(self._name)
                with contextlib.suppress(pulsar.asyncio.PulsarException):
                    await consumer.close()
            if not self._stopping:
                attempt += 1
                await asyncio.sleep(
                    full_jitter(attempt, base=RETRY_BASE_SECONDS, cap=RETRY_CAP_SECONDS)
                )

    async def _consume(self, consumer: Any) -> None:
        """Run the workers until stopped or until the consumer fails under them."""
        workers = [
            asyncio.create_task(self._work(consumer), name=f"pulsar-{self._name}-{n}")
            for n in range(self._concurrency)
        ]
        try:
            done, _ = await asyncio.wait(workers, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    log.warning(
                        "pulsar_consumer_lost", component=self._name, error=str(task.exception())
                    )
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    async def _work(self, consumer: Any) -> None:
        me = asyncio.current_task()
        assert me is not None
        while not self._stopping:
            # Only a worker waiting here is cancelled by stop(); one handling a message finishes.
            self._receiving.add(me)
            try:
                message = await consumer.receive()
            except asyncio.CancelledError:
                if self._stopping:
                    return
                raise
            finally:
                self._receiving.discard(me)
            try:
                await self._handle(consumer, message)
            except Exception:  # a handler bug must not stop the subscription: redeliver later
                log.exception("pulsar_handler_failed", component=self._name)
                with contextlib.suppress(pulsar.asyncio.PulsarException):
                    await consumer.negative_acknowledge(message)
