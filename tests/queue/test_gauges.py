"""Queue gauges computed from the database: depth per state and the oldest queued job's age."""

from __future__ import annotations

from service.metrics import Metrics
from service.queue import JOB_STATES, JobQueue
from service.queue.gauges import refresh_queue_gauges
from tests.queue.samples import make_job

T0 = 1_700_000_000.0


async def test_gauges_follow_the_queue(queue: JobQueue) -> None:
    metrics = Metrics()
    first, _ = await queue.enqueue(make_job(), now=T0)
    await queue.enqueue(make_job(), now=T0 + 10)
    await queue.cancel_queued(first.id, now=T0 + 11)

    await refresh_queue_gauges(queue, metrics, now=T0 + 25)

    sample = metrics.registry.get_sample_value
    depth = {state: sample("cirelay_queue_depth", {"state": state}) for state in JOB_STATES}
    assert depth == {state: 0.0 for state in JOB_STATES} | {"queued": 1.0, "cancelled": 1.0}
    assert sample("cirelay_queue_oldest_age_seconds") == 15.0
