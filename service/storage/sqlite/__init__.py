"""The embedded backend: every table in one SQLite file (WAL), one process or a few sharing it."""

from __future__ import annotations

from service.storage.sqlite.database import Database
from service.storage.sqlite.deliveries import SQLiteDeliveries
from service.storage.sqlite.events import SQLiteEventLog
from service.storage.sqlite.leases import SQLiteLeases
from service.storage.sqlite.queue import SQLiteJobQueue
from service.storage.sqlite.retention import SQLiteRetention


class SQLiteStorage:
    def __init__(
        self,
        db: Database,
        queue: SQLiteJobQueue,
        events: SQLiteEventLog,
        leases: SQLiteLeases,
        deliveries: SQLiteDeliveries,
    ) -> None:
        self._db = db
        self.queue = queue
        self.events = events
        self.leases = leases
        self.deliveries = deliveries
        self.retention = SQLiteRetention(db)

    @classmethod
    async def open(
        cls,
        path: str,
        *,
        outbox: bool,
        rejected_body_max_bytes: int,
        rejected_max_count: int,
        rejected_max_bytes: int,
    ) -> SQLiteStorage:
        db = await Database.open(path)
        try:
            queue = await SQLiteJobQueue.open(db)
            events = await SQLiteEventLog.open(
                db,
                outbox=outbox,
                rejected_body_max_bytes=rejected_body_max_bytes,
                rejected_max_count=rejected_max_count,
                rejected_max_bytes=rejected_max_bytes,
            )
            leases = await SQLiteLeases.open(db)
            deliveries = await SQLiteDeliveries.open(db)
        except BaseException:
            await db.close()
            raise
        return cls(db, queue, events, leases, deliveries)

    async def ping(self) -> None:
        async with self._db.transaction() as conn:
            await conn.execute("SELECT 1")

    async def close(self) -> None:
        try:
            await self.queue.close()
            await self.events.close()
            await self.deliveries.close()
        finally:
            await self._db.close()


__all__ = ["SQLiteStorage"]
