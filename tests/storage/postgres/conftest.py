"""PostgreSQL-only storage tests: event logs as replicas (one pool each) on this test's database,
and raw connections for what no replica would do (a transaction held open across others')."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest

from service.storage.postgres.database import Database
from service.storage.postgres.events import PostgresEventLog

OpenReplica = Callable[[], Awaitable[PostgresEventLog]]
Connect = Callable[[], Awaitable[asyncpg.Connection]]


@pytest.fixture
async def open_replica(postgres_url: str) -> AsyncIterator[OpenReplica]:
    """A new replica's event log (its own pool, outbox on); closed at the end."""
    opened: list[tuple[Database, PostgresEventLog]] = []

    async def factory() -> PostgresEventLog:
        db = await Database.open(postgres_url, pool_size=4)
        log = await PostgresEventLog.open(
            db, outbox=True, rejected_body_max_bytes=16, rejected_max_count=3
        )
        opened.append((db, log))
        return log

    yield factory
    for db, log in reversed(opened):
        await log.close()
        await db.close()


@pytest.fixture
async def connect(postgres_url: str) -> AsyncIterator[Connect]:
    """A raw connection to this test's database; closed at the end."""
    connections: list[asyncpg.Connection] = []

    async def factory() -> asyncpg.Connection:
        connection = await asyncpg.connect(postgres_url)
        connections.append(connection)
        return connection

    yield factory
    for connection in connections:
        await connection.close()
