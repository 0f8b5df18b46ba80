"""Retention: what is older than ``CIRELAY_RETENTION_DAYS`` is deleted, a small step at a time.

Finished jobs (any final state) whose end is older than the period go, with their events (and
outbox entries), the media jobs the reconciler recorded for them and their idempotency keys; so do
events attached to no job, refused bodies, and webhook deliveries delivered or dead (with the
callback bodies kept for them) older than the period. A job that has not finished
stays, however old. Each step is one short transaction of at most ``STEP_ROWS`` rows, so intake
and ingestion interleave with it rather than wait behind it.

It runs every hour, or ten times per period when that is more often, on every replica; the lease
``retention`` makes one at a time do it. ``0`` days keeps everything.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime

import structlog

from service.identity import process_owner
from service.metrics import Metrics
from service.storage import Deliveries, Leases, Retention
from service.timefmt import utc_text

log = structlog.get_logger(__name__)

STEP_ROWS = 500
LEASE = "retention"
TABLES = (
    "jobs",
    "events",
    "batch_media",
    "rejected_callbacks",
    "deliveries",
    "delivery_bodies",
    "leases",
)
_DAY = 86_400.0
_MOST_SECONDS_BETWEEN_RUNS = 3_600.0
_RUNS_PER_PERIOD = 10


def retention_interval(days: float) -> float:
    """Seconds between runs: at least hourly and at least ten times per retention period."""
    return min(_MOST_SECONDS_BETWEEN_RUNS, days * _DAY / _RUNS_PER_PERIOD)


class Retainer:
    def __init__(
        self,
        retention: Retention,
        leases: Leases,
        metrics: Metrics,
        *,
        days: float,
        clock: Callable[[], float] = time.time,
        owner: str | None = None,  # who holds the lease; this process unless told (tests)
        deliveries: Deliveries | None = None,  # webhook deliveries delivered or dead, and bodies
    ) -> None:
        if days <= 0:
            raise ValueError("retention needs a period of more than 0 days")
        self._retention = retention
        self._deliveries = deliveries
        self._leases = leases
        self._metrics = metrics
        self._days = days
        self._clock = clock
        self._owner = owner or process_owner()
        self.interval = retention_interval(days)
        for table in TABLES:
            metrics.retention_pruned.labels(table)

    async def run(self) -> None:
        """Prune every ``interval`` seconds until cancelled."""
        while True:
            try:
                await self.prune_once()
            except Exception:  # a failed run is retried on the next tick, not fatal
                log.exception("retention_failed")
            await asyncio.sleep(self.interval)

    async def prune_once(self) -> dict[str, int]:
        """Delete everything past the period, step by step, if this replica holds the lease;
        rows deleted by table."""
        now = self._clock()
        cutoff = now - self._days * _DAY
        cutoff_text = utc_text(datetime.fromtimestamp(cutoff, UTC))
        retention = self._retention

        async def unattached() -> dict[str, int]:
            rows = await retention.prune_unattached_events(
                received_before=cutoff_text, limit=STEP_ROWS
            )
            return {"events": rows} if rows else {}

        async def rejected() -> dict[str, int]:
            rows = await retention.prune_rejected(received_before=cutoff_text, limit=STEP_ROWS)
            return {"rejected_callbacks": rows} if rows else {}

        async def jobs() -> dict[str, int]:
            return await retention.prune_jobs(finished_before=cutoff, limit=STEP_ROWS)

        async def deliveries() -> dict[str, int]:
            if self._deliveries is None:
                return {}
            return await self._deliveries.prune(before=cutoff, limit=STEP_ROWS)

        pruned: Counter[str] = Counter()
        for step in (jobs, unattached, rejected, deliveries):
            while await self._hold():
                deleted = await step()
                if not deleted:
                    break
                for table, rows in deleted.items():
                    pruned[table] += rows
                    self._metrics.retention_pruned.labels(table).inc(rows)
                await asyncio.sleep(0)  # let waiting writes have the database between steps
        if pruned:
            log.info("retention_pruned", **pruned)
        return dict(pruned)

    async def _hold(self) -> bool:
        return await self._leases.acquire(LEASE, self._owner, ttl=self.interval, now=self._clock())
