"""The SQLite event log on a real file: dedup, group commit, feed, links, outbox, rejections."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from service.storage import StoreClosed
from service.storage.sqlite.database import Database
from service.storage.sqlite.events import SQLiteEventLog


def event(event_id: str, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "event_id": event_id,
        "event_type": "TaskFinish",
        "source": "http",
        "format": "xml",
        "job_id": f"j-{event_id}",
        "batch_id": None,
        "cirelay_job_id": None,
        "received_at": "2024-01-01T00:00:00Z",
        "state": "Success",
    }
    base.update(fields)
    return base


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "events.db"


@pytest.fixture
async def db(db_path: Path) -> AsyncIterator[Database]:
    database = await Database.open(str(db_path))
    yield database
    await database.close()


@pytest.fixture
async def store(db: Database) -> AsyncIterator[SQLiteEventLog]:
    s = await SQLiteEventLog.open(db, outbox=True, rejected_body_max_bytes=16, rejected_max_count=3)
    yield s
    await s.close()


def committed_event_ids(path: Path) -> set[str]:
    """What another connection sees: only committed rows."""
    with sqlite3.connect(path) as conn:
        return {row[0] for row in conn.execute("SELECT event_id FROM events")}


async def test_new_then_duplicate(store: SQLiteEventLog) -> None:
    assert await store.store([event("a"), event("b")]) == [True, True]
    assert await store.store([event("b", source="poll"), event("c")]) == [False, True]
    page = await store.feed()
    assert [e["event_id"] for _, e in page] == ["a", "b", "c"]
    assert page[1][1]["source"] == "http"  # the first delivery is the one kept
    assert [seq for seq, _ in page] == sorted(seq for seq, _ in page)


async def test_same_event_twice_in_one_call(store: SQLiteEventLog) -> None:
    assert await store.store([event("a"), event("a")]) == [True, False]


async def test_each_caller_returns_only_after_commit(store: SQLiteEventLog, db_path: Path) -> None:
    async def one(i: int) -> bool:
        [is_new] = await store.store([event(f"e{i}")])
        # Read through a separate connection: it sees committed data only.
        assert f"e{i}" in committed_event_ids(db_path)
        return is_new

    results = await asyncio.gather(*(one(i) for i in range(200)))
    assert all(results)
    assert committed_event_ids(db_path) == {f"e{i}" for i in range(200)}


async def test_concurrent_stores_share_transactions(store: SQLiteEventLog, db: Database) -> None:
    inserts: list[str] = []

    def trace(sql: str) -> None:
        if sql.lstrip().startswith("INSERT INTO events"):
            inserts.append(sql)

    await db.conn.set_trace_callback(trace)
    results = await asyncio.gather(*(store.store([event(f"e{i}")]) for i in range(100)))
    await db.conn.set_trace_callback(None)
    assert results == [[True]] * 100
    # Each transaction is one INSERT statement; far fewer of them than callers.
    assert 1 <= len(inserts) < 100


async def test_documents_are_kept_exactly(store: SQLiteEventLog) -> None:
    document = {"n": 2**70, "f": 0.1, "s": "é\u2028", "empty": None, "list": [1, "2"]}
    await store.store([event("exact", document=document)])
    [(_, stored)] = await store.feed()
    assert stored["document"] == document
    assert type(stored["document"]["n"]) is int


async def test_concurrent_duplicates_exactly_one_new(store: SQLiteEventLog) -> None:
    results = await asyncio.gather(*(store.store([event("same")]) for _ in range(20)))
    assert sorted(r[0] for r in results) == [False] * 19 + [True]
    assert len(await store.feed()) == 1


async def test_a_failing_write_does_not_fail_its_batch(store: SQLiteEventLog) -> None:
    good = [store.store([event(f"g{i}")]) for i in range(10)]
    bad = store.store([event("bad", event_type=None)])  # NOT NULL violation inside SQLite
    results = await asyncio.gather(*good, bad, return_exceptions=True)
    assert results[:10] == [[True]] * 10
    assert isinstance(results[10], sqlite3.IntegrityError)
    assert {e["event_id"] for _, e in await store.feed()} == {f"g{i}" for i in range(10)}


async def test_close_commits_pending_and_refuses_more(db: Database, db_path: Path) -> None:
    s = await SQLiteEventLog.open(
        db, outbox=False, rejected_body_max_bytes=16, rejected_max_count=3
    )
    pending = [asyncio.create_task(s.store([event(f"p{i}")])) for i in range(5)]
    await asyncio.sleep(0)  # let the tasks hand over their rows
    await s.close()
    assert [t.result() for t in pending] == [[True]] * 5
    assert committed_event_ids(db_path) == {f"p{i}" for i in range(5)}
    with pytest.raises(StoreClosed):
        await s.store([event("late")])


async def test_feed_paging_and_filters(store: SQLiteEventLog) -> None:
    await store.store(
        [
            event("a", cirelay_job_id="job1", job_id="m1"),
            event("b", cirelay_job_id="job2", job_id="m2"),
            event("c", cirelay_job_id="job1", job_id="m3", event_type="BatchFinish"),
            event("d", job_id="m4"),
        ]
    )
    first = await store.feed(limit=2)
    assert [e["event_id"] for _, e in first] == ["a", "b"]
    rest = await store.feed(after=first[-1][0], limit=10)
    assert [e["event_id"] for _, e in rest] == ["c", "d"]
    assert await store.feed(after=rest[-1][0]) == []
    by_job = await store.feed(job_id="job1")
    assert [e["event_id"] for _, e in by_job] == ["a", "c"]
    assert [e["event_id"] for _, e in await store.feed(job_id="m4")] == ["d"]
    by_type = await store.feed(event_type="BatchFinish")
    assert [e["event_id"] for _, e in by_type] == ["c"]
    assert await store.feed(job_id="job1", event_type="WorkflowFinish") == []


async def test_outbox_rows_for_new_events_only(store: SQLiteEventLog) -> None:
    await store.store([event("a"), event("b")])
    await store.store([event("a")])
    assert await store.outbox_pending() == 2
    batch = await store.outbox_batch(10)
    assert [e["event_id"] for _, e in batch] == ["a", "b"]
    await store.outbox_done([batch[0][0]])
    assert [e["event_id"] for _, e in await store.outbox_batch(10)] == ["b"]
    assert await store.outbox_pending() == 1


async def test_no_outbox_rows_without_a_publisher(db: Database) -> None:
    s = await SQLiteEventLog.open(
        db, outbox=False, rejected_body_max_bytes=16, rejected_max_count=3
    )
    try:
        assert await s.store([event("a")]) == [True]
        assert await s.outbox_pending() == 0
    finally:
        await s.close()


async def test_rejected_bodies_are_kept_bounded(store: SQLiteEventLog) -> None:
    for i in range(5):
        await store.reject(
            received_at="2024-01-01T00:00:00Z",
            source="http",
            reason="malformed_xml",
            message=f"bad {i}",
            content_type="application/xml",
            body=b"<Response>" + b"x" * 100,
        )
    kept = await store.rejected()
    assert [r.message for r in kept] == ["bad 2", "bad 3", "bad 4"]  # at most 3, newest kept
    assert kept[0].body == b"<Response>xxxxxx"  # cut at 16 bytes
    assert kept[0].body_bytes == 110
    assert (kept[0].reason, kept[0].source) == ("malformed_xml", "http")


async def test_migration_is_idempotent(db: Database, store: SQLiteEventLog) -> None:
    await store.store([event("a")])
    again = await SQLiteEventLog.open(
        db, outbox=True, rejected_body_max_bytes=16, rejected_max_count=3
    )
    try:
        assert [e["event_id"] for _, e in await again.feed()] == ["a"]
    finally:
        await again.close()
