"""Sends due deliveries: claimed under a lease, at most ``concurrency`` at once per process and
``per_destination`` per origin, none to an origin whose circuit is open.

Every replica runs one. A claim leases each delivery to this process for longer than an attempt
can take, so no two replicas send one delivery at once, and a replica that dies lets go of its
deliveries when their leases run out (they are then sent again: at least once). A delivery is due
only when no earlier delivery of its chain (one destination, one job) is pending, so each job's
deliveries reach a destination in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter as Tally
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import structlog

from service.identity import process_owner
from service.metrics import Metrics
from service.queue.signal import Signal
from service.storage import Deliveries, Delivery
from service.webhooks.attempt import Outcome, attempt
from service.webhooks.breaker import Breakers
from service.webhooks.ssrf import AddressPolicy

log = structlog.get_logger(__name__)

# Spread of each scheduled delay: ±20 %, so deliveries that failed together do not retry together.
JITTER = 0.2
# A claim's lease: twice the whole-attempt timeout (which includes connecting) and this slack for
# recording the outcome, so a live attempt never outlasts its lease.
_LEASE_SLACK_SECONDS = 5.0
# Slots refilled at once: a quarter of the concurrency.
_REFILL_FRACTION = 4
# Longest a free slot waits for a batch to gather before it is refilled alone.
_REFILL_SECONDS = 0.02
# Candidates read per free slot: some may be to an origin already at its limit.
_CANDIDATES_PER_SLOT = 4
OUTCOMES = ("delivered", "retried", "dead")


@dataclass(frozen=True)
class DispatchConfig:
    keys: tuple[bytes, ...]
    schedule: tuple[float, ...]
    policy: AddressPolicy
    concurrency: int
    per_destination: int
    connect_timeout: float
    timeout: float
    breaker_failures: int
    breaker_seconds: float
    poll_interval: float = 1.0


class Dispatcher:
    def __init__(
        self,
        deliveries: Deliveries,
        session: aiohttp.ClientSession,
        config: DispatchConfig,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self._deliveries = deliveries
        self._session = session
        self._config = config
        self._metrics = metrics
        self._clock = clock
        self._rng = rng or random.Random()
        self._owner = process_owner()
        self._breakers = Breakers(
            threshold=config.breaker_failures, cooldown=config.breaker_seconds
        )
        self._in_flight: dict[asyncio.Task[None], str] = {}  # task -> origin
        self._batch = max(1, config.concurrency // _REFILL_FRACTION)
        self._last_fill = 0.0
        self.wake = Signal()
        for outcome in OUTCOMES:
            metrics.webhook_deliveries.labels(outcome)

    async def run(self) -> None:
        try:
            while True:
                try:
                    await self._fill()
                    wait = await self._idle_wait()
                except Exception:  # the database went away: keep the loop, try again soon
                    log.exception("webhook_dispatch_failed")
                    wait = self._config.poll_interval
                await self.wake.wait(wait)
        finally:
            await self._drain()

    async def _idle_wait(self) -> float:
        """How long to sleep unless woken (new deliveries here, an attempt finished)."""
        free = self._config.concurrency - len(self._in_flight)
        if free <= 0:
            return self._config.poll_interval
        if free < self._batch:
            return _REFILL_SECONDS
        due = await self._deliveries.next_due()
        wait = self._config.poll_interval if due is None else due - self._clock()
        # Due already, yet not taken just now: leased by another replica, or its destination
        # is at its limit or its circuit open. A finishing attempt wakes the loop; otherwise
        # look again after the poll interval.
        return self._config.poll_interval if wait <= 0 else min(wait, self._config.poll_interval)

    async def _fill(self) -> None:
        # Refill in batches: one query and one claim for many free slots, not one per attempt
        # that finished; a few free slots are refilled too once a short while has passed, so
        # slots held by slow receivers never keep the others waiting long.
        while (free := self._config.concurrency - len(self._in_flight)) >= self._batch or (
            free > 0 and time.monotonic() - self._last_fill >= _REFILL_SECONDS
        ):
            self._last_fill = time.monotonic()
            now = self._clock()
            busy = Tally(self._in_flight.values())
            skip = {o for o, n in busy.items() if n >= self._cap(o, now)}
            skip.update(self._breakers.open_origins(now))
            due = await self._deliveries.due(
                now=now, limit=free * _CANDIDATES_PER_SLOT, skip_origins=sorted(skip)
            )
            ids: list[str] = []
            for delivery_id, origin in due:
                if busy[origin] < self._cap(origin, now) and len(ids) < free:
                    busy[origin] += 1
                    ids.append(delivery_id)
            if not ids:
                return
            claimed = await self._deliveries.claim(
                ids, self._owner, now=now, lease_seconds=self._lease_seconds()
            )
            started = 0
            for delivery in claimed:
                task = asyncio.create_task(self._send(delivery), name=f"webhook-{delivery.id}")
                self._in_flight[task] = delivery.origin
                task.add_done_callback(self._finished)
                started += 1
            if started == 0:
                return

    def _cap(self, origin: str, now: float) -> int:
        if self._breakers.state(origin, now) == "half_open":
            return 1  # one trial attempt
        return self._config.per_destination

    def _lease_seconds(self) -> float:
        return 2 * self._config.timeout + _LEASE_SLACK_SECONDS

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._in_flight.pop(task, None)
        self.wake.notify()
        if not task.cancelled() and task.exception() is not None:
            log.error("webhook_attempt_crashed", error=repr(task.exception()))

    async def _send(self, delivery: Delivery) -> None:
        started = time.monotonic()
        outcome = await attempt(
            self._session,
            delivery,
            keys=self._config.keys,
            policy=self._config.policy,
            connect_timeout=self._config.connect_timeout,
            attempt_timeout=self._config.timeout,
            now=self._clock(),
        )
        self._metrics.webhook_attempt_duration.observe(time.monotonic() - started)
        await self._record(delivery, outcome)

    async def _record(self, delivery: Delivery, outcome: Outcome) -> None:
        now = self._clock()
        if outcome.delivered:
            self._breakers.succeeded(delivery.origin)
            assert outcome.status is not None
            await self._deliveries.delivered(
                delivery.id, self._owner, status=outcome.status, now=now
            )
            self._metrics.webhook_deliveries.labels("delivered").inc()
            return
        if outcome.retryable:
            self._breakers.failed(delivery.origin, now)
        elif outcome.status is not None:
            self._breakers.succeeded(delivery.origin)  # it answered: the receiver is up
        retry_at = self._retry_at(delivery.attempts + 1, outcome, now)
        await self._deliveries.failed(
            delivery.id,
            self._owner,
            status=outcome.status,
            error=outcome.error or "failed",
            retry_at=retry_at,
        )
        result = "retried" if retry_at is not None else "dead"
        self._metrics.webhook_deliveries.labels(result).inc()
        log.info(
            "webhook_attempt_failed",
            delivery_id=delivery.id,
            kind=delivery.kind,
            origin=delivery.origin,
            attempt=delivery.attempts + 1,
            status=outcome.status,
            error=outcome.error,
            outcome=result,
        )

    def _retry_at(self, attempts: int, outcome: Outcome, now: float) -> float | None:
        """When attempt ``attempts + 1`` is due, or None when the delivery is dead."""
        schedule = self._config.schedule
        if not outcome.retryable or attempts > len(schedule):
            return None
        delay = schedule[attempts - 1] * self._rng.uniform(1 - JITTER, 1 + JITTER)
        if outcome.retry_after is not None:
            delay = max(delay, outcome.retry_after)
        return now + delay

    async def _drain(self) -> None:
        """On shutdown: attempts in flight finish or are cancelled; a cancelled one is sent
        again once its lease runs out."""
        tasks = list(self._in_flight)
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=self._config.timeout)
        for task in pending:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks, return_exceptions=True)


async def refresh_gauges(deliveries: Deliveries, metrics: Metrics, *, now: float) -> None:
    counts = await deliveries.counts()
    metrics.webhook_pending.set(counts["pending"])
    metrics.webhook_dead.set(counts["dead"])
    oldest = await deliveries.oldest_pending_created_at()
    metrics.webhook_oldest_pending_age.set(0.0 if oldest is None else max(0.0, now - oldest))
