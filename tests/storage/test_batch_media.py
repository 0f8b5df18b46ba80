"""Batch reconciliation's storage on every backend: recorded media jobs attach events whatever the
order, the accounting counts what is still missing, the progress survives a reopen."""

from __future__ import annotations

import asyncio
from typing import Any

from service.storage import BatchProgress, Storage
from service.storage.postgres import events as pg_events
from service.storage.postgres import queue as pg_queue
from service.storage.postgres.database import Database as PostgresDatabase
from service.storage.sqlite import events as sqlite_events
from service.storage.sqlite import queue as sqlite_queue
from service.storage.sqlite.database import Database as SQLiteDatabase
from tests.storage.conftest import OpenBackend


def task_finish(event_id: str, media_job_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "event_type": "TaskFinish",
        "source": "pulsar",
        "format": "json",
        "job_id": media_job_id,
        "batch_id": None,
        "cirelay_job_id": None,
        "received_at": "2024-01-01T00:00:00Z",
        "state": "Success",
        **fields,
    }


async def links(storage: Storage, job_id: str) -> dict[str, tuple[str | None, str | None]]:
    return {
        e["event_id"]: (e["cirelay_job_id"], e["batch_id"])
        for e in await storage.events.for_job(job_id)
    }


async def test_events_stored_before_the_listing_are_attached_by_it(storage: Storage) -> None:
    events = storage.events
    await events.store(
        [
            task_finish("before", "m1"),  # came without a per-job token
            task_finish("own", "m2", cirelay_job_id="job1"),  # token known, batch not yet
            task_finish("other", "m9", cirelay_job_id="job9", batch_id="b9"),
        ]
    )
    missing = await events.record_listing(BatchProgress("job1", "b1"), ["m1", "m3"])
    assert missing == {"m3"}  # m1's TaskFinish is attached now
    assert await links(storage, "job1") == {"before": ("job1", "b1"), "own": ("job1", None)}
    [(_, other)] = await events.feed(job_id="job9")
    assert (other["cirelay_job_id"], other["batch_id"]) == ("job9", "b9")


async def test_events_stored_after_the_listing_are_attached_as_they_are_stored(
    storage: Storage,
) -> None:
    events = storage.events
    await events.record_listing(BatchProgress("job1", "b1"), ["m1", "m2"])
    assert (await events.unaccounted("job1", "b1")).missing == 2
    # The race of a reconcile pass: stored after the pass recorded (linked) the batch's media
    # jobs, before it checked them. The insert attaches it; the check counts it.
    await events.store([task_finish("late", "m1")])
    assert await links(storage, "job1") == {"late": ("job1", "b1")}
    accounting = await events.unaccounted("job1", "b1")
    assert (accounting.recorded, accounting.missing) == (2, 1)
    assert await events.missing_media("job1", after="", limit=10) == ["m2"]
    assert await events.missing_media("job1", after="m2", limit=10) == []


async def test_unaccounted_gives_the_job_its_batch_id_and_counts_only_task_finish(
    storage: Storage,
) -> None:
    events = storage.events
    await events.store(
        [
            task_finish("own", "m1", cirelay_job_id="job1"),
            task_finish("workflow", "m2", event_type="WorkflowFinish"),
        ]
    )
    await events.record_listing(BatchProgress("job1", "b1"), ["m1", "m2"])
    accounting = await events.unaccounted("job1", "b1")
    assert (accounting.recorded, accounting.missing) == (2, 1)
    assert await events.missing_media("job1", after="", limit=10) == ["m2"]
    assert await links(storage, "job1") == {"own": ("job1", "b1"), "workflow": ("job1", "b1")}


async def test_recording_again_is_harmless_and_keeps_the_first_owner(storage: Storage) -> None:
    events = storage.events
    await events.record_listing(BatchProgress("job1", "b1"), ["m1"])
    await events.record_listing(BatchProgress("job1", "b1"), ["m1"])
    await events.record_listing(BatchProgress("job2", "b2"), ["m1"])
    assert (await events.unaccounted("job1", "b1")).recorded == 1
    assert (await events.unaccounted("job2", "b2")).recorded == 0


async def test_progress_is_saved_with_the_listing_and_survives_a_reopen(
    open_backend: OpenBackend,
) -> None:
    first = await open_backend()
    assert await first.events.batch_progress("job1") is None
    progress = BatchProgress("job1", "b1", page_token="t2", complete=False, sweep_token=None)
    await first.events.record_listing(progress, ["m1"])
    done = BatchProgress("job1", "b1", page_token="t3", complete=True, sweep_token="s1")
    await first.events.record_listing(done, [])
    again = await open_backend()
    assert await again.events.batch_progress("job1") == done


async def test_concurrent_listing_and_events_leave_nothing_unattached(storage: Storage) -> None:
    """Events of a batch stored while its pages are recorded, in every interleaving the
    scheduler makes: each ends attached, on one replica's storage or several."""
    events = storage.events
    media = [f"m{n:03d}" for n in range(300)]

    async def record() -> None:
        for start in range(0, len(media), 20):
            await events.record_listing(BatchProgress("job1", "b1"), media[start : start + 20])

    async def deliver() -> None:
        for media_id in media:
            await events.store([task_finish(f"e-{media_id}", media_id)])

    await asyncio.gather(record(), deliver())
    attached = await links(storage, "job1")
    assert len(attached) == len(media)
    assert set(attached.values()) == {("job1", "b1")}
    assert (await events.unaccounted("job1", "b1")).missing == 0


async def test_an_upgrade_from_the_first_schema_keeps_what_was_stored(
    backend: str, storage_url: str, open_backend: OpenBackend
) -> None:
    """A database made by the previous release (version 1 of each component) takes the new
    tables and indexes on open, and what it held is still there and attachable."""
    if backend == "sqlite":
        sqlite_db = await SQLiteDatabase.open(storage_url.removeprefix("sqlite:///"))
        await sqlite_db.migrate("queue", sqlite_queue.MIGRATIONS[:1])
        await sqlite_db.migrate("events", sqlite_events.MIGRATIONS[:1])
        async with sqlite_db.transaction() as conn:
            await conn.execute(
                "INSERT INTO events (event_id, event_type, source, job_id, received_at, body)"
                " VALUES ('old', 'TaskFinish', 'pulsar', 'm1', '2024-01-01T00:00:00Z', ?)",
                ('{"event_id": "old", "job_id": "m1"}',),
            )
        await sqlite_db.close()
    else:
        pg_db = await PostgresDatabase.open(storage_url, pool_size=1)
        await pg_db.migrate("queue", pg_queue.MIGRATIONS[:1])
        await pg_db.migrate("events", pg_events.MIGRATIONS[:1])
        async with pg_db.transaction() as conn:
            await conn.execute(
                "INSERT INTO events (event_id, event_type, source, job_id, received_at, body)"
                " VALUES ('old', 'TaskFinish', 'pulsar', 'm1', '2024-01-01T00:00:00Z', $1)",
                '{"event_id": "old", "job_id": "m1"}',
            )
        await pg_db.close()
    storage = await open_backend()
    assert await storage.events.record_listing(BatchProgress("job1", "b1"), ["m1"]) == set()
    assert await links(storage, "job1") == {"old": ("job1", "b1")}
