"""What only the PostgreSQL queue does: replicas migrating at once, claims that skip rows other
replicas hold, the claim's plan at depth, and the database going away under it.

The queue's contract itself is tested on every backend in ``tests/storage/test_queue.py``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from service.queue import JobQueue
from service.storage import Storage, StorageUnavailable, open_storage
from service.storage.postgres.queue import CLAIM, MIGRATIONS
from tests.postgres_server import PostgresServer
from tests.queue.rig import until
from tests.queue.samples import make_job

T0 = 1_700_000_000.0
LEASE = 30.0


@pytest.fixture
async def replicas(postgres_url: str) -> AsyncIterator[list[Storage]]:
    """Two storages on one database, as two replicas would open it, started at the same moment
    on a fresh database (so both race to migrate it)."""
    opened = await asyncio.gather(open_storage(postgres_url), open_storage(postgres_url))
    yield list(opened)
    for storage in opened:
        await storage.close()


@pytest.fixture
async def sql(postgres_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain connection of the test's own, outside any storage."""
    conn = await asyncpg.connect(postgres_url)
    yield conn
    await conn.close()


async def test_replicas_starting_at_once_migrate_once(
    replicas: list[Storage], sql: asyncpg.Connection
) -> None:
    versions = await sql.fetch(
        "SELECT version FROM schema_migrations WHERE component = 'queue' ORDER BY version"
    )
    assert [r["version"] for r in versions] == [m.version for m in MIGRATIONS]
    job, _ = await replicas[0].queue.enqueue(make_job(), now=T0)
    assert await replicas[1].queue.get(job.id) == job


async def test_a_claim_skips_the_job_another_replica_is_claiming(
    replicas: list[Storage], sql: asyncpg.Connection
) -> None:
    queue = replicas[0].queue
    best, _ = await queue.enqueue(make_job(level=2), now=T0)
    next_best, _ = await queue.enqueue(make_job(level=1), now=T0)

    # Another replica's claim transaction holds the best job's row and has not committed.
    async with sql.transaction():
        await sql.execute("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", best.id)
        # Answers while the lock is held: it neither waits for it nor hands out the locked job.
        claimed = await asyncio.wait_for(
            replicas[1].queue.claim("w", lease_seconds=LEASE, now=T0), timeout=30
        )
        assert claimed is not None
        assert claimed.id == next_best.id
        assert await queue.claim("w", lease_seconds=LEASE, now=T0) is None
    # The other transaction ended without claiming it: the job is there to take.
    again = await queue.claim("w", lease_seconds=LEASE, now=T0)
    assert again is not None
    assert again.id == best.id


async def _listening(sql: asyncpg.Connection, replicas: int) -> None:
    """Until every replica's queue has its LISTEN connection up (the statement done)."""

    async def listening() -> bool:
        count = await sql.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND state = 'idle'"
            """ AND query = 'LISTEN "cirelay_queue"'"""
        )
        return bool(count == replicas)

    await until(listening, f"{replicas} queues listening")


async def _wakes_the_other_replica(replicas: list[Storage], sql: asyncpg.Connection) -> None:
    await _listening(sql, len(replicas))
    idle = asyncio.create_task(replicas[1].queue.wait_changed(3600))
    await asyncio.sleep(0)  # let the waiter start waiting
    await replicas[0].queue.enqueue(make_job(), now=T0)
    # Nothing happened in replica 1's own process: only the notification can wake it.
    await asyncio.wait_for(idle, timeout=30)


async def test_an_enqueue_on_one_replica_wakes_idle_workers_on_another(
    replicas: list[Storage], sql: asyncpg.Connection
) -> None:
    await _wakes_the_other_replica(replicas, sql)


async def test_a_job_given_back_by_one_replica_wakes_idle_workers_on_another(
    replicas: list[Storage], sql: asyncpg.Connection
) -> None:
    job, _ = await replicas[0].queue.enqueue(make_job(), now=T0)
    assert await replicas[0].queue.claim("leaving", lease_seconds=LEASE, now=T0) is not None
    await _listening(sql, len(replicas))
    idle = asyncio.create_task(replicas[1].queue.wait_changed(3600))
    await asyncio.sleep(0)
    assert await replicas[0].queue.release(job.id, "leaving", now=T0)
    await asyncio.wait_for(idle, timeout=30)


def _plan_nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    nodes = [plan]
    for child in plan.get("Plans", []):
        nodes += _plan_nodes(child)
    return nodes


async def _plan(sql: asyncpg.Connection, statement: str, *args: Any) -> list[dict[str, Any]]:
    explained = json.loads(await sql.fetchval(f"EXPLAIN (FORMAT JSON) {statement}", *args))
    return _plan_nodes(explained[0]["Plan"])


async def test_the_claim_walks_the_priority_index_however_many_jobs_are_stored(
    replicas: list[Storage], sql: asyncpg.Connection
) -> None:
    # 50,000 queued jobs over three levels and as many finished ones.
    await sql.execute(
        "INSERT INTO jobs (id, state, bucket, region, tag, job_level, request, submit_name,"
        " caller_callback, via, created_at, available_at)"
        " SELECT 'bulk' || n, CASE WHEN n % 2 = 0 THEN 'queued' ELSE 'succeeded' END, 'b', 'r',"
        " 'Transcode', n % 3, '{}', 's' || n, '', 'http', $1, $1"
        " FROM generate_series(1, 100000) AS n",
        T0,
    )
    await sql.execute("ANALYZE jobs")

    nodes = await _plan(sql, CLAIM, "w", T0 + LEASE, T0)
    scans = [n for n in nodes if n.get("Relation Name") == "jobs" and "Index Name" in n]
    assert "jobs_claim" in {n["Index Name"] for n in scans}
    assert not [n for n in nodes if n["Node Type"] in ("Sort", "Incremental Sort", "Seq Scan")]

    for statement in (
        "SELECT MIN(available_at) FROM jobs WHERE state = 'queued'",
        "SELECT created_at FROM jobs WHERE state = 'queued' ORDER BY seq LIMIT 1",
    ):
        nodes = await _plan(sql, statement)
        assert not [n for n in nodes if n["Node Type"] in ("Sort", "Seq Scan")], statement

    claimed = await replicas[0].queue.claim("w", lease_seconds=LEASE, now=T0)
    assert claimed is not None
    assert (claimed.job_level, claimed.id) == (2, "bulk2")


async def test_the_queue_answers_unavailable_while_postgres_is_down_and_recovers(
    replicas: list[Storage], postgres_server: PostgresServer, postgres_url: str
) -> None:
    queue: JobQueue = replicas[0].queue
    before, _ = await queue.enqueue(make_job(), now=T0)

    await asyncio.to_thread(postgres_server.halt)
    with pytest.raises(StorageUnavailable):
        await queue.enqueue(make_job(), now=T0)
    with pytest.raises(StorageUnavailable):
        await queue.claim("w", lease_seconds=LEASE, now=T0)
    with pytest.raises(StorageUnavailable):
        await queue.get(before.id)
    await asyncio.to_thread(postgres_server.resume)

    async def enqueued() -> bool:
        try:
            await queue.enqueue(make_job(), now=T0)
        except StorageUnavailable:  # a pooled connection that died with the server
            return False
        return True

    await until(enqueued, "an enqueue after the restart")
    claimed = await queue.claim("w", lease_seconds=LEASE, now=T0)
    assert claimed is not None
    assert claimed.id == before.id  # committed before the crash, still there
    # The queues listen again: other replicas' enqueues wake idle workers as before.
    sql = await asyncpg.connect(postgres_url)
    try:
        await _wakes_the_other_replica(replicas, sql)
    finally:
        await sql.close()


async def test_replicas_sending_the_same_keys_in_opposite_orders_never_deadlock(
    replicas: list[Storage], postgres_server: PostgresServer
) -> None:
    # A deadlock would still end right (the batch is retried job by job), but only after
    # PostgreSQL's one-second deadlock timeout, with an error in the server's log.
    deadlocks_before = postgres_server.log_file.read_text().count("deadlock detected")
    for round_ in range(5):
        keys = [f"key-{round_}-{i}" for i in range(40)]
        results = await asyncio.gather(
            *(replicas[0].queue.enqueue(make_job(key=k, fingerprint="f"), now=T0) for k in keys),
            *(
                replicas[1].queue.enqueue(make_job(key=k, fingerprint="f"), now=T0)
                for k in reversed(keys)
            ),
        )
        assert sum(created for _, created in results) == 40
    assert postgres_server.log_file.read_text().count("deadlock detected") == deadlocks_before
