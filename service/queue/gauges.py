"""Queue gauges (`cirelay_queue_depth{state}`, `cirelay_queue_oldest_age_seconds`) from the DB."""

from __future__ import annotations

from service.metrics import Metrics
from service.queue.protocol import JobQueue


async def refresh_queue_gauges(queue: JobQueue, metrics: Metrics, *, now: float) -> None:
    for state, count in (await queue.depth_by_state()).items():
        metrics.queue_depth.labels(state).set(count)
    metrics.queue_oldest_age.set(await queue.oldest_queued_age(now))
