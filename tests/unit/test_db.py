"""Database: checkpoints happen on the checkpointer's connection, never inside a commit."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from service.storage.sqlite.database import Database

# More WAL pages than SQLite's automatic checkpoint threshold (1,000 pages of 4 KiB).
ROWS = 1_200
ROW_BYTES = 4_000


def size(path: Path | str) -> int:
    return os.stat(path).st_size


async def write_rows(db: Database) -> None:
    async with db.transaction() as conn:
        await conn.execute("CREATE TABLE blobs (id INTEGER PRIMARY KEY, data BLOB NOT NULL)")
        await conn.executemany(
            "INSERT INTO blobs (data) VALUES (?)", [(bytes(ROW_BYTES),) for _ in range(ROWS)]
        )


async def test_commits_leave_checkpoints_to_the_checkpointer(tmp_path: Path) -> None:
    path = tmp_path / "quiet.db"
    db = await Database.open(str(path), checkpoint_seconds=3600)
    try:
        await write_rows(db)
        # Past the automatic threshold, yet the commit copied nothing into the database file.
        assert size(path) < ROWS * ROW_BYTES / 10
        assert size(f"{path}-wal") > ROWS * ROW_BYTES
    finally:
        await db.close()


async def test_checkpointer_copies_the_wal_into_the_database(tmp_path: Path) -> None:
    path = tmp_path / "busy.db"
    db = await Database.open(str(path), checkpoint_seconds=0.01)
    try:
        await write_rows(db)
        async with asyncio.timeout(10):
            # The effect is on disk, with nothing to wait on but the file.
            while size(path) < ROWS * ROW_BYTES:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
    finally:
        await db.close()
