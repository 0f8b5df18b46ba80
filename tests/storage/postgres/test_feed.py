"""The feed's cursor is gap-free on PostgreSQL with many writers (the transaction-id watermark):
a row whose transaction commits after a later one's is served before it, never skipped."""

from __future__ import annotations

import asyncio
import itertools
import json

import asyncpg

from service.storage import FEED_START, FeedPosition
from service.storage.postgres.events import PostgresEventLog
from tests.postgres_server import PostgresServer
from tests.storage.postgres.conftest import Connect, OpenReplica
from tests.storage.samples import event

# What a slow writer does inside its transaction: take a seq value now, commit much later.
INSERT_LATE = (
    "INSERT INTO events (event_id, event_type, source, job_id, received_at, body)"
    " VALUES ($1, 'TaskFinish', 'http', $2, '2024-01-01T00:00:00Z', $3) RETURNING seq"
)


async def insert_late(connection: asyncpg.Connection, event_id: str) -> int:
    """Insert one event inside the connection's open transaction; its seq."""
    row = event(event_id)
    seq = await connection.fetchval(INSERT_LATE, event_id, row["job_id"], json.dumps(row))
    return int(seq)


async def ids_after(log: PostgresEventLog, after: FeedPosition) -> list[str]:
    return [e["event_id"] for _, e in await log.feed(after=after, limit=1000)]


async def test_a_late_commit_is_served_before_the_rows_that_overtook_it(
    open_replica: OpenReplica, connect: Connect
) -> None:
    a, b = await open_replica(), await open_replica()
    await a.store([event("first")])
    [(cursor, _)] = await a.feed()
    slow = await connect()
    transaction = slow.transaction()
    await transaction.start()
    late_seq = await insert_late(slow, "late")
    assert await b.store([event("after")]) == [True]
    # The hazard: a reader ordering by seq alone would now move past the seq "late" holds.
    observer = await connect()
    assert await observer.fetchval("SELECT max(seq) FROM events") > late_seq
    assert await ids_after(a, cursor) == []  # held back while "late" may still commit
    await transaction.commit()
    assert await ids_after(a, cursor) == ["late", "after"]
    assert await ids_after(b, cursor) == ["late", "after"]  # every replica serves one order


async def test_a_rolled_back_writer_releases_the_feed(
    open_replica: OpenReplica, connect: Connect
) -> None:
    log = await open_replica()
    slow = await connect()
    transaction = slow.transaction()
    await transaction.start()
    await insert_late(slow, "never")
    await log.store([event("after")])
    assert await ids_after(log, FEED_START) == []
    await transaction.rollback()
    assert await ids_after(log, FEED_START) == ["after"]


async def test_an_open_transaction_elsewhere_on_the_server_holds_the_feed_back(
    open_replica: OpenReplica, postgres_server: PostgresServer
) -> None:
    # The documented caveat: the watermark is the server's oldest running transaction, in any
    # database, whatever it writes.
    log = await open_replica()
    elsewhere = await asyncpg.connect(postgres_server.url)
    try:
        transaction = elsewhere.transaction()
        await transaction.start()
        await elsewhere.fetchval("SELECT pg_current_xact_id()")  # takes a transaction id
        await log.store([event("held")])
        assert await ids_after(log, FEED_START) == []
        await transaction.commit()
        assert await ids_after(log, FEED_START) == ["held"]
    finally:
        await elsewhere.close()


async def test_an_open_transaction_that_only_reads_holds_nothing_back(
    open_replica: OpenReplica, connect: Connect
) -> None:
    log = await open_replica()
    reader = await connect()
    transaction = reader.transaction(isolation="repeatable_read")
    await transaction.start()
    assert await reader.fetchval("SELECT count(*) FROM events") == 0  # takes no transaction id
    await log.store([event("served")])
    assert await ids_after(log, FEED_START) == ["served"]
    await transaction.rollback()


async def test_concurrent_writers_and_a_poller_see_every_event_exactly_once(
    open_replica: OpenReplica, connect: Connect
) -> None:
    replicas = [await open_replica() for _ in range(3)]
    poller = await open_replica()
    late_writers = [await connect() for _ in range(2)]
    late_rounds = 8
    ticket = itertools.count()  # order in which commits were known to be done
    committed_at: dict[str, int] = {}
    replica_stores = 0  # store calls the replicas completed
    commits = asyncio.Condition()
    late_done = asyncio.Event()

    async def replica_writer(log: PostgresEventLog, name: str) -> None:
        nonlocal replica_stores
        # Keeps writing until every slow transaction has been overtaken and committed.
        for i in itertools.count():
            if late_done.is_set() and i >= 20:
                return
            ids = [f"{name}-{i}-{part}" for part in range(1 + i % 3)]
            assert await log.store([event(x) for x in ids]) == [True] * len(ids)
            async with commits:
                for x in ids:
                    committed_at[x] = next(ticket)
                replica_stores += 1
                commits.notify_all()

    async def late_writer(connection: asyncpg.Connection, name: str) -> None:
        for i in range(late_rounds):
            transaction = connection.transaction()
            await transaction.start()
            event_id = f"{name}-{i}"
            await insert_late(connection, event_id)
            # Hold the transaction open while replicas commit rows with higher seq values: each
            # replica has at most one store in flight, so one more than there are replicas
            # includes a store that began after this insert.
            async with commits:
                target = replica_stores + len(replicas) + 1
                await commits.wait_for(lambda target=target: replica_stores >= target)
            committed_at[event_id] = next(ticket)  # every earlier ticket committed before it
            await transaction.commit()

    seen: list[tuple[FeedPosition, str]] = []

    async def poll() -> None:
        position = FEED_START
        while True:
            writing = not writers.done()
            page = await poller.feed(after=position, limit=5)
            seen.extend((p, e["event_id"]) for p, e in page)
            if page:
                position = page[-1][0]
            elif not writing:  # nothing was running when this empty page was read
                return
            else:
                await asyncio.sleep(0.002)

    async def write_all() -> None:
        async def lates() -> None:
            await asyncio.gather(*(late_writer(c, f"late{n}") for n, c in enumerate(late_writers)))
            late_done.set()

        await asyncio.gather(
            lates(), *(replica_writer(log, f"r{n}") for n, log in enumerate(replicas))
        )

    writers = asyncio.create_task(write_all())
    async with asyncio.timeout(60):
        await asyncio.gather(writers, poll())

    ids = [event_id for _, event_id in seen]
    assert len(ids) == len(set(ids))  # nothing twice
    assert set(ids) == set(committed_at)  # nothing skipped
    positions = [position for position, _ in seen]
    assert positions == sorted(positions)
    assert len(set(positions)) == len(positions)
    # The hazard really happened: rows with higher seq values committed before each late row.
    seq_of = {event_id: position[1] for position, event_id in seen}
    overtaken = {
        late
        for late in seq_of
        if late.startswith("late")
        and any(
            seq_of[other] > seq_of[late] and committed_at[other] < committed_at[late]
            for other in seq_of
            if not other.startswith("late")
        )
    }
    assert len(overtaken) == 2 * late_rounds
