"""The event log's contract on every backend: dedup (within a replica and across replicas), group
commit, the feed, links, the outbox, rejected bodies."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

import asyncpg
import pytest

from service.storage import Storage, StoreClosed, open_storage
from tests.storage.conftest import OpenBackend
from tests.storage.samples import event


async def test_new_then_duplicate(storage: Storage) -> None:
    store = storage.events
    assert await store.store([event("a"), event("b")]) == [True, True]
    assert await store.store([event("b", source="poll"), event("c")]) == [False, True]
    page = await store.feed()
    assert [e["event_id"] for _, e in page] == ["a", "b", "c"]
    assert page[1][1]["source"] == "http"  # the first delivery is the one kept
    assert [position for position, _ in page] == sorted(position for position, _ in page)


async def test_same_event_twice_in_one_call(storage: Storage) -> None:
    assert await storage.events.store([event("a"), event("a")]) == [True, False]


async def test_events_of_one_call_keep_their_order(storage: Storage) -> None:
    await storage.events.store([event("z"), event("b"), event("m")])
    assert [e["event_id"] for _, e in await storage.events.feed()] == ["z", "b", "m"]


async def test_each_caller_returns_only_after_commit(
    storage: Storage, open_backend: OpenBackend
) -> None:
    # Another replica's connection sees committed rows only.
    other = await open_backend()

    async def one(i: int) -> bool:
        [is_new] = await storage.events.store([event(f"e{i}")])
        assert await other.events.job_ids_with("TaskFinish", [f"j-e{i}"]) == {f"j-e{i}"}
        return is_new

    results = await asyncio.gather(*(one(i) for i in range(200)))
    assert all(results)
    stored = await other.events.job_ids_with("TaskFinish", [f"j-e{i}" for i in range(200)])
    assert len(stored) == 200


async def test_documents_are_kept_exactly(storage: Storage) -> None:
    document = {"n": 2**70, "f": 0.1, "s": "é\u2028\u0000", "empty": None, "list": [1, "2"]}
    await storage.events.store([event("exact", document=document)])
    [(_, stored)] = await storage.events.feed()
    assert stored["document"] == document
    assert type(stored["document"]["n"]) is int


async def test_concurrent_duplicates_exactly_one_new(storage: Storage) -> None:
    results = await asyncio.gather(*(storage.events.store([event("same")]) for _ in range(20)))
    assert sorted(r[0] for r in results) == [False] * 19 + [True]
    assert len(await storage.events.feed()) == 1


async def test_replicas_storing_the_same_events_at_once_keep_each_once(
    storage: Storage, open_backend: OpenBackend
) -> None:
    other = await open_backend()
    ids = [f"e{i}" for i in range(50)]

    # Each replica gets every event, in a different order and grouping: overlapping batches.
    async def deliver(replica: Storage, order: list[str]) -> list[bool]:
        flags = await asyncio.gather(*(replica.events.store([event(i)]) for i in order))
        return [flag for [flag] in flags]

    mine, theirs = await asyncio.gather(deliver(storage, ids), deliver(other, ids[::-1]))
    new_per_id = [a + b for a, b in zip(mine, theirs[::-1], strict=True)]
    assert new_per_id == [1] * 50  # one replica stored each event, the other saw a duplicate
    stored = [e["event_id"] for _, e in await storage.events.feed(limit=1000)]
    assert sorted(stored) == sorted(ids)


async def test_replicas_storing_overlapping_multi_event_calls(
    storage: Storage, open_backend: OpenBackend
) -> None:
    # Opposite orders inside each call: rows locked in call order would deadlock on PostgreSQL.
    other = await open_backend()
    forward = [event(f"e{i}") for i in range(30)]
    results = await asyncio.gather(
        *(storage.events.store(forward) for _ in range(5)),
        *(other.events.store(forward[::-1]) for _ in range(5)),
    )
    assert sum(flag for flags in results for flag in flags) == 30
    assert len(await storage.events.feed(limit=1000)) == 30


async def test_a_failing_write_does_not_fail_its_batch(storage: Storage, backend: str) -> None:
    store = storage.events
    good = [store.store([event(f"g{i}")]) for i in range(10)]
    bad = store.store([event("bad", event_type=None)])  # NOT NULL violation in the database
    results = await asyncio.gather(*good, bad, return_exceptions=True)
    assert results[:10] == [[True]] * 10
    # A bug, reported as the database's error, not as the database being unavailable.
    not_null = {"sqlite": sqlite3.IntegrityError, "postgres": asyncpg.NotNullViolationError}
    assert isinstance(results[10], not_null[backend])
    assert {e["event_id"] for _, e in await store.feed()} == {f"g{i}" for i in range(10)}


async def test_close_commits_pending_and_refuses_more(
    storage_url: str, open_backend: OpenBackend
) -> None:
    closing = await open_storage(storage_url)
    pending = [asyncio.create_task(closing.events.store([event(f"p{i}")])) for i in range(5)]
    await asyncio.sleep(0)  # let the tasks hand over their rows
    await closing.close()
    assert [t.result() for t in pending] == [[True]] * 5
    other = await open_backend()
    stored = await other.events.job_ids_with("TaskFinish", [f"j-p{i}" for i in range(5)])
    assert stored == {f"j-p{i}" for i in range(5)}
    with pytest.raises(StoreClosed):
        await closing.events.store([event("late")])


async def test_feed_paging_and_filters(storage: Storage) -> None:
    store = storage.events
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
    later = await store.feed(after=by_job[0][0], job_id="job1")
    assert [e["event_id"] for _, e in later] == ["c"]


async def test_feed_pages_across_transactions(storage: Storage) -> None:
    for i in range(5):
        await storage.events.store([event(f"t{i}a"), event(f"t{i}b")])
    seen: list[str] = []
    position = (0, 0)
    while page := await storage.events.feed(after=position, limit=3):
        seen += [e["event_id"] for _, e in page]
        position = page[-1][0]
    assert seen == [f"t{i}{part}" for i in range(5) for part in "ab"]


async def test_has_events(storage: Storage) -> None:
    await storage.events.store([event("own", cirelay_job_id="job1")])
    assert await storage.events.has_events("job1")
    assert not await storage.events.has_events("nobody")


async def test_for_job_oldest_first(storage: Storage) -> None:
    for name in ("x", "a", "m"):
        await storage.events.store([event(name, cirelay_job_id="job1")])
    assert [e["event_id"] for e in await storage.events.for_job("job1")] == ["x", "a", "m"]
    assert [e["event_id"] for e in await storage.events.for_job("job1", limit=2)] == ["x", "a"]
    assert await storage.events.count_for_job("job1") == 3
    assert await storage.events.for_job("nobody") == []
    assert await storage.events.count_for_job("nobody") == 0


async def test_job_ids_with(storage: Storage) -> None:
    store = storage.events
    await store.store([event("a", job_id="m1"), event("b", job_id="m2", event_type="Other")])
    assert await store.job_ids_with("TaskFinish", ["m1", "m2", "m3"]) == {"m1"}
    assert await store.job_ids_with("TaskFinish", []) == set()


async def test_outbox_rows_for_new_events_only(storage: Storage) -> None:
    store = storage.events
    await store.store([event("a"), event("b")])
    await store.store([event("a")])
    assert await store.outbox_pending() == 2
    batch = await store.outbox_batch(10)
    assert [e["event_id"] for _, e in batch] == ["a", "b"]
    await store.outbox_done([batch[0][0]])
    assert [e["event_id"] for _, e in await store.outbox_batch(10)] == ["b"]
    assert await store.outbox_pending() == 1
    await store.outbox_done([])
    assert await store.outbox_pending() == 1


async def test_no_outbox_rows_without_a_publisher(open_backend: OpenBackend) -> None:
    storage = await open_backend(outbox=False)
    assert await storage.events.store([event("a")]) == [True]
    assert await storage.events.outbox_pending() == 0
    assert await storage.events.outbox_batch(10) == []


async def test_rejected_bodies_are_kept_bounded(storage: Storage) -> None:
    for i in range(5):
        await storage.events.reject(
            received_at="2024-01-01T00:00:00Z",
            source="http",
            reason="malformed_xml",
            message=f"bad {i}",
            content_type="application/xml",
            body=b"<Response>" + b"x" * 100,
        )
    kept = await storage.events.rejected()
    assert [r.message for r in kept] == ["bad 2", "bad 3", "bad 4"]  # at most 3, newest kept
    assert kept[0].body == b"<Response>xxxxxx"  # cut at 16 bytes
    assert kept[0].body_bytes == 110
    assert (kept[0].reason, kept[0].source) == ("malformed_xml", "http")
    assert [r.message for r in await storage.events.rejected(after=kept[0].id, limit=1)] == [
        "bad 3"
    ]


async def test_rejected_filters_get_update_delete(storage: Storage) -> None:
    for source, reason in [
        ("http", "malformed_xml"),
        ("pulsar", "malformed_xml"),
        ("http", "doctype"),
    ]:
        await storage.events.reject(
            received_at="2024-01-01T00:00:00Z",
            source=source,
            reason=reason,
            message=f"{source} {reason}",
            content_type="application/xml",
            body=b"<x/>",
        )
    events = storage.events
    assert [r.message for r in await events.rejected(reason="malformed_xml")] == [
        "http malformed_xml",
        "pulsar malformed_xml",
    ]
    [pulsar] = await events.rejected(reason="malformed_xml", source="pulsar")
    assert [r.message for r in await events.rejected(source="http")] == [
        "http malformed_xml",
        "http doctype",
    ]
    assert await events.get_rejected(pulsar.id) == pulsar
    await events.update_rejected(pulsar.id, "too_deep", "still refused")
    updated = await events.get_rejected(pulsar.id)
    assert updated is not None
    assert (updated.reason, updated.message, updated.body) == ("too_deep", "still refused", b"<x/>")
    await events.delete_rejected(pulsar.id)
    assert await events.get_rejected(pulsar.id) is None
    assert len(await events.rejected()) == 2


async def test_reattribute_moves_only_events_linked_elsewhere(storage: Storage) -> None:
    await storage.events.store(
        [
            event("wrong", job_id="m1", cirelay_job_id="jobA", batch_id="batchA"),
            event("right", job_id="m2", cirelay_job_id="jobB", batch_id="batchB"),
            event("unlinked", job_id="m3"),
            event("other", job_id="m9", cirelay_job_id="jobA", batch_id="batchA"),
        ]
    )
    moved = await storage.events.reattribute("jobB", "batchB", ["m1", "m2", "m3"])
    assert moved == ["http"]  # only the event linked to another job moved
    links = {
        e["event_id"]: (e["cirelay_job_id"], e["batch_id"])
        for _, e in await storage.events.feed(limit=10)
    }
    assert links == {
        "wrong": ("jobB", "batchB"),
        "right": ("jobB", "batchB"),
        "unlinked": (None, None),  # link_job fills those in
        "other": ("jobA", "batchA"),
    }


async def test_rejected_metadata_with_a_nul_is_kept(storage: Storage, backend: str) -> None:
    # A Pulsar property may carry any character; PostgreSQL text cannot hold a NUL.
    await storage.events.reject(
        received_at="2024-01-01T00:00:00Z",
        source="pulsar",
        reason="malformed_json",
        message="bad\x00",
        content_type="application/json\x00x",
        body=b"{\x00",
    )
    [kept] = await storage.events.rejected()
    mark = {"sqlite": "\x00", "postgres": "\ufffd"}[backend]
    assert (kept.message, kept.content_type) == (f"bad{mark}", f"application/json{mark}x")
    assert kept.body == b"{\x00"


async def test_rejected_and_events_in_one_batch(storage: Storage) -> None:
    async def reject(i: int) -> None:
        await storage.events.reject(
            received_at="2024-01-01T00:00:00Z",
            source="http",
            reason="malformed_json",
            message=f"bad {i}",
            content_type="application/json",
            body=b"\x00\xff",
        )

    results: list[Any] = await asyncio.gather(
        *(storage.events.store([event(f"e{i}")]) for i in range(3)), reject(0), reject(1)
    )
    assert results == [[True]] * 3 + [None, None]
    assert [r.body for r in await storage.events.rejected()] == [b"\x00\xff"] * 2


async def test_replicas_starting_at_once_migrate_once(open_backend: OpenBackend) -> None:
    first, *others = await asyncio.gather(*(open_backend() for _ in range(3)))
    assert await first.events.store([event("a")]) == [True]
    for other in others:
        assert await other.events.store([event("a")]) == [False]


async def test_migration_is_idempotent(storage: Storage, open_backend: OpenBackend) -> None:
    await storage.events.store([event("a")])
    again = await open_backend()
    assert [e["event_id"] for _, e in await again.events.feed()] == ["a"]
