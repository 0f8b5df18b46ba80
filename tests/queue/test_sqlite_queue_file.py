"""What only the SQLite queue does: several processes on one file, its migrations, its plan.

The queue's contract itself is tested on every backend in ``tests/storage/test_queue.py``.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from service.storage.sqlite.database import Database
from service.storage.sqlite.queue import MIGRATIONS, SQLiteJobQueue
from tests.queue.samples import make_job

T0 = 1_700_000_000.0


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = await Database.open(str(tmp_path / "queue.db"))
    yield database
    await database.close()


@pytest.fixture
async def sqlite_queue(db: Database) -> SQLiteJobQueue:
    return await SQLiteJobQueue.open(db)


async def test_processes_sharing_the_file_never_claim_the_same_job(
    db: Database, sqlite_queue: SQLiteJobQueue, tmp_path: Path
) -> None:
    ids = set()
    for i in range(300):
        record, _ = await sqlite_queue.enqueue(make_job(level=i % 3), now=T0 + i)
        ids.add(record.id)
    path = str(tmp_path / "queue.db")
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.queue.claimer",
            path,
            f"proc{i}",
            stdout=asyncio.subprocess.PIPE,
        )
        for i in range(4)
    ]
    outputs = [await p.communicate() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0]
    claimed = [line for out, _ in outputs for line in out.decode().split()]

    assert len(claimed) == len(set(claimed)) == 300
    assert set(claimed) == ids


async def test_migrations_are_versioned_and_idempotent(db: Database) -> None:
    await SQLiteJobQueue.open(db)
    await SQLiteJobQueue.open(db)
    async with db.exclusive() as conn:
        cur = await conn.execute("SELECT version FROM schema_migrations WHERE component = 'queue'")
        rows = await cur.fetchall()
    assert [r[0] for r in rows] == [m.version for m in MIGRATIONS]


async def test_the_claim_uses_the_priority_index(
    db: Database, sqlite_queue: SQLiteJobQueue
) -> None:
    async with db.exclusive() as conn:
        cur = await conn.execute(
            "EXPLAIN QUERY PLAN SELECT seq FROM jobs WHERE state = 'queued' AND available_at <= ?"
            " ORDER BY job_level DESC, seq LIMIT 1",
            (T0,),
        )
        plan = " ".join(str(r[3]) for r in await cur.fetchall())
    assert "jobs_claim" in plan
    assert "TEMP B-TREE" not in plan
