"""The PostgreSQL event log beyond the shared contract: group commit per replica, and replicas
storing overlapping batches without deadlocking."""

from __future__ import annotations

import asyncio

import asyncpg

from tests.storage.postgres.conftest import Connect, OpenReplica
from tests.storage.postgres.test_feed import insert_late
from tests.storage.samples import event


async def test_concurrent_stores_share_transactions(open_replica: OpenReplica) -> None:
    log = await open_replica()
    results = await asyncio.gather(*(log.store([event(f"e{i}")]) for i in range(100)))
    assert results == [[True]] * 100
    # A feed position names the transaction that wrote the row: far fewer than callers.
    transactions = {position[0] for position, _ in await log.feed(limit=1000)}
    assert 1 <= len(transactions) < 100


async def lock_waits(observer: asyncpg.Connection, count: int) -> None:
    """Returns once ``count`` sessions of this database wait for a row or transaction lock."""
    # The server's state, polled: nothing announces that a session started waiting.
    while (  # noqa: ASYNC110
        await observer.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        < count
    ):
        await asyncio.sleep(0.01)


async def test_replicas_storing_overlapping_batches_in_opposite_orders_never_deadlock(
    open_replica: OpenReplica, connect: Connect
) -> None:
    # Rows inserted in the order they were handed over would deadlock here: "a" (by one replica)
    # and "z" (by the other) go in, both wait for "m", and once it is settled each waits for
    # the row the other one holds.
    a, b = await open_replica(), await open_replica()
    slow = await connect()
    transaction = slow.transaction()
    await transaction.start()
    await insert_late(slow, "m")
    first = asyncio.create_task(a.store([event("a"), event("m"), event("z")]))
    second = asyncio.create_task(b.store([event("z"), event("m"), event("a")]))
    async with asyncio.timeout(10):
        await lock_waits(await connect(), 2)
    await transaction.commit()
    async with asyncio.timeout(10):
        [mine, theirs] = await asyncio.gather(first, second)
    assert mine[1] is theirs[1] is False  # "m" was the slow writer's
    assert (mine[0] + theirs[2], mine[2] + theirs[0]) == (1, 1)  # "a" and "z" stored once each
