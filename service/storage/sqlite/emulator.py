"""Emulator state in SQLite (CIRELAY_EMULATOR_STATE): every record written through on change."""

from __future__ import annotations

import json
from collections.abc import Iterable

from service.emulator.records import Batch, MediaJob
from service.storage.sqlite.database import Database, Migration

MIGRATIONS = (
    Migration(
        1,
        """
        CREATE TABLE emulator_batches (
            job_id TEXT PRIMARY KEY, bucket TEXT NOT NULL, data TEXT NOT NULL);
        CREATE TABLE emulator_media_jobs (
            job_id TEXT PRIMARY KEY, batch_id TEXT NOT NULL, data TEXT NOT NULL)
        """,
    ),
)


class StateStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    @classmethod
    async def open(cls, path: str) -> StateStore:
        db = await Database.open(path)
        await db.migrate("emulator", MIGRATIONS)
        return cls(db)

    async def close(self) -> None:
        await self._db.close()

    async def load(self) -> tuple[list[Batch], list[MediaJob]]:
        async with self._db.exclusive() as conn:
            cur = await conn.execute("SELECT data FROM emulator_batches")
            batch_rows = await cur.fetchall()
            cur = await conn.execute("SELECT data FROM emulator_media_jobs")
            job_rows = await cur.fetchall()
        batches = [Batch.from_dict(json.loads(row[0])) for row in batch_rows]
        jobs = [MediaJob.from_dict(json.loads(row[0])) for row in job_rows]
        return batches, jobs

    async def save(self, batches: Iterable[Batch] = (), jobs: Iterable[MediaJob] = ()) -> None:
        async with self._db.transaction() as conn:
            await conn.executemany(
                "INSERT OR REPLACE INTO emulator_batches (job_id, bucket, data) VALUES (?, ?, ?)",
                [(b.job_id, b.bucket, json.dumps(b.to_dict())) for b in batches],
            )
            await conn.executemany(
                "INSERT OR REPLACE INTO emulator_media_jobs (job_id, batch_id, data)"
                " VALUES (?, ?, ?)",
                [(j.job_id, j.batch_id, json.dumps(j.to_dict())) for j in jobs],
            )
