"""The SQLite event log beyond the shared contract (``tests/storage/test_events.py``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from service.storage.sqlite.database import Database
from service.storage.sqlite.events import SQLiteEventLog
from tests.storage.samples import event


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = await Database.open(str(tmp_path / "events.db"))
    yield database
    await database.close()


async def test_concurrent_stores_share_transactions(db: Database) -> None:
    store = await SQLiteEventLog.open(
        db, outbox=False, rejected_body_max_bytes=16, rejected_max_count=3
    )
    inserts: list[str] = []

    def trace(sql: str) -> None:
        if sql.lstrip().startswith("INSERT INTO events"):
            inserts.append(sql)

    await db.conn.set_trace_callback(trace)
    try:
        results = await asyncio.gather(*(store.store([event(f"e{i}")]) for i in range(100)))
    finally:
        await db.conn.set_trace_callback(None)
        await store.close()
    assert results == [[True]] * 100
    # Each transaction is one INSERT statement; far fewer of them than callers.
    assert 1 <= len(inserts) < 100
