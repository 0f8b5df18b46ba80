"""Retention on every backend: what is past the period goes in small steps, unfinished jobs and
recent rows stay, old feed cursors keep working, the rows pruned are counted."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from service.app import create_app
from service.appkeys import QUEUE, STORAGE
from service.metrics import Metrics
from service.queue import JobQueue
from service.retention import STEP_ROWS, Retainer, retention_interval
from service.storage import BatchProgress, Storage, open_storage
from tests.events.support import events_settings, sample, submitted_job
from tests.queue.rig import until
from tests.storage.conftest import OpenBackend

DAY = 86_400.0


def event(event_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "event_type": "TaskFinish",
        "source": "http",
        "format": "xml",
        "job_id": f"m-{event_id}",
        "batch_id": None,
        "cirelay_job_id": None,
        "received_at": "2024-01-01T00:00:00.000Z",
        "state": "Success",
        **fields,
    }


async def reject(storage: Storage, received_at: str, body: bytes = b"<bad") -> None:
    await storage.events.reject(
        received_at=received_at,
        source="http",
        reason="malformed_xml",
        message="bad",
        content_type="application/xml",
        body=body,
    )


def test_it_runs_at_least_hourly_and_ten_times_a_period() -> None:
    assert retention_interval(30) == 3600
    assert retention_interval(0.01) == 0.01 * DAY / 10


async def test_old_finished_jobs_go_with_everything_of_theirs(open_backend: OpenBackend) -> None:
    storage = await open_backend(outbox=True)
    now = time.time()
    old = await submitted_job(storage.queue)
    recent = await submitted_job(storage.queue)
    unfinished = await submitted_job(storage.queue)  # as old as the others, never finished
    many = [event(f"old{n:04d}", cirelay_job_id=old.id) for n in range(STEP_ROWS + 20)]
    for start in range(0, len(many), 100):
        await storage.events.store(many[start : start + 100])
    await storage.events.record_listing(BatchProgress(old.id, "b-old"), ["m-a", "m-b"])
    await storage.events.store(
        [
            event("recent", cirelay_job_id=recent.id),
            event("open", cirelay_job_id=unfinished.id),
            event("orphan-old"),  # attached to no job, received long ago
            event("orphan-new", received_at="2999-01-01T00:00:00.000Z"),
        ]
    )
    assert await storage.queue.finish(old.id, "succeeded", at=now - 40 * DAY)
    assert await storage.queue.finish(recent.id, "failed", at=now - 1 * DAY)
    cursor = (await storage.events.feed(limit=2))[-1][0]  # a poller that read two old events
    await reject(storage, "2024-01-01T00:00:00.000Z")
    await reject(storage, "2999-01-01T00:00:00.000Z")

    metrics = Metrics()
    retainer = Retainer(storage.retention, storage.leases, metrics, days=30, clock=lambda: now)
    pruned = await retainer.prune_once()

    assert pruned == {
        "events": STEP_ROWS + 20 + 1,
        "batch_media": 2,
        "jobs": 1,
        "rejected_callbacks": 1,
    }
    assert await storage.queue.get(old.id) is None
    assert await storage.queue.get(recent.id) is not None
    assert await storage.queue.get(unfinished.id) is not None
    assert (await storage.events.unaccounted(old.id, "b-old")).recorded == 0
    assert await storage.events.batch_progress(old.id) is None
    assert [e["event_id"] for _, e in await storage.events.feed(after=cursor)] == [
        "recent",
        "open",
        "orphan-new",
    ]  # the old cursor carries on from the oldest event kept
    assert await storage.events.outbox_pending() == 3
    assert [r.received_at for r in await storage.events.rejected()] == ["2999-01-01T00:00:00.000Z"]
    for table, rows in pruned.items():
        assert sample(metrics.registry, "cirelay_retention_pruned_total", table=table) == rows
    assert await retainer.prune_once() == {}  # nothing left to do


async def test_one_replica_at_a_time_prunes(open_backend: OpenBackend) -> None:
    first, second = await open_backend(), await open_backend()
    now = time.time()
    job = await submitted_job(first.queue)
    assert await first.queue.finish(job.id, "succeeded", at=now - 40 * DAY)
    holder = Retainer(
        first.retention, first.leases, Metrics(), days=30, clock=lambda: now, owner="replica-1"
    )
    other = Retainer(
        second.retention, second.leases, Metrics(), days=30, clock=lambda: now, owner="replica-2"
    )
    assert await holder.prune_once() == {"jobs": 1}
    job = await submitted_job(first.queue)
    assert await first.queue.finish(job.id, "succeeded", at=now - 40 * DAY)
    assert await other.prune_once() == {}  # the lease is the first replica's for an interval
    assert await first.queue.get(job.id) is not None


async def test_leases_of_work_long_gone_are_pruned_live_ones_kept(
    open_backend: OpenBackend,
) -> None:
    storage = await open_backend()
    now = time.time()
    # A batch cancelled 40 days ago: its reconcile lease was never released.
    assert await storage.leases.acquire("reconcile:gone", "r1", ttl=30, now=now - 40 * DAY)
    assert await storage.leases.acquire("reconcile:live", "r1", ttl=30, now=now)
    retainer = Retainer(storage.retention, storage.leases, Metrics(), days=30, clock=lambda: now)
    assert await retainer.prune_once() == {"leases": 1}
    # The pruned name is free again; the live one is still r1's.
    assert await storage.leases.acquire("reconcile:gone", "r2", ttl=30, now=now)
    assert not await storage.leases.acquire("reconcile:live", "r2", ttl=30, now=now)


async def test_refused_bodies_are_bounded_in_total_bytes(open_backend: OpenBackend) -> None:
    storage = await open_backend(rejected_body_max_bytes=100, rejected_max_bytes=250)
    for n in range(4):
        await reject(storage, f"2024-01-01T00:00:0{n}.000Z", body=bytes([65 + n]) * 1000)
    kept = await storage.events.rejected()
    # 100 bytes kept of each; the two newest fit in 250.
    assert [(r.body, r.body_bytes) for r in kept] == [(b"C" * 100, 1000), (b"D" * 100, 1000)]


async def test_the_service_prunes_at_start_and_keeps_everything_with_0_days(
    tmp_path: Path, aiohttp_client: Callable[..., Awaitable[Any]]
) -> None:
    url = f"sqlite:///{tmp_path / 'cirelay.db'}"
    storage = await open_storage(url)
    job = await submitted_job(storage.queue)
    assert await storage.queue.finish(job.id, "succeeded", at=time.time() - 40 * DAY)
    await storage.close()

    forever = await aiohttp_client(
        create_app(events_settings(tmp_path, CIRELAY_RETENTION_DAYS="0"))
    )
    # No retainer runs: nobody holds its lease, and the job is still there.
    assert await forever.app[STORAGE].leases.acquire("retention", "probe", ttl=1, now=time.time())
    await forever.app[STORAGE].leases.release("retention", "probe")
    assert await forever.app[QUEUE].get(job.id) is not None
    await forever.close()

    client = await aiohttp_client(create_app(events_settings(tmp_path)))  # 30 days
    await until(lambda: _gone(client.app[QUEUE], job.id), "the old job pruned")


async def _gone(queue: JobQueue, job_id: str) -> bool:
    return await queue.get(job_id) is None
