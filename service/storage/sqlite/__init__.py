"""The embedded backend: every table in one SQLite file (WAL), one process or a few sharing it."""

from __future__ import annotations

from service.storage.sqlite.database import Database
from service.storage.sqlite.events import SQLiteEventLog
from service.storage.sqlite.leases import SQLiteLeases
from service.storage.sqlite.queue import SQLiteJobQueue


class SQLiteStorage:
    def __init__(
        self, db: Database, queue: SQLiteJobQueue, events: SQLiteEventLog, leases: SQLiteLeases
    ) -> None:
        self._db = db
        self.queue = queue
        self.events = events
        self.leases = leases

    @classmethod
    async def open(
        cls, path: str, *, outbox: bool, rejected_body_max_bytes: int, rejected_max_count: int
    ) -> SQLiteStorage:
        db = await Database.open(path)
        try:
            queue = await SQLiteJobQueue.open(db)
            events = await SQLiteEventLog.open(
                db,
                outbox=outbox,
                rejected_body_max_bytes=rejected_body_max_bytes,
                rejected_max_count=rejected_max_count,
            )
            leases = await SQLiteLeases.open(db)
        except BaseException:
            await db.close()
            raise
        return cls(db, queue, events, leases)

    async def ping(self) -> None:
        async with self._db.transaction() as conn:
            await conn.execute("SELECT 1")

    async def close(self) -> None:
        try:
            await self.queue.close()
            await self.events.close()
        finally:
            await self._db.close()


__all__ = ["SQLiteStorage"]
