"""The many-replica backend: every table in one PostgreSQL database, shared by every replica."""

from __future__ import annotations

from service.storage.postgres.database import Database
from service.storage.postgres.events import PostgresEventLog
from service.storage.postgres.leases import PostgresLeases
from service.storage.postgres.queue import PostgresJobQueue


class PostgresStorage:
    def __init__(
        self,
        db: Database,
        queue: PostgresJobQueue,
        events: PostgresEventLog,
        leases: PostgresLeases,
    ) -> None:
        self._db = db
        self.queue = queue
        self.events = events
        self.leases = leases

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        pool_size: int,
        outbox: bool,
        rejected_body_max_bytes: int,
        rejected_max_count: int,
    ) -> PostgresStorage:
        db = await Database.open(url, pool_size=pool_size)
        try:
            queue = await PostgresJobQueue.open(db)
            events = await PostgresEventLog.open(
                db,
                outbox=outbox,
                rejected_body_max_bytes=rejected_body_max_bytes,
                rejected_max_count=rejected_max_count,
            )
            leases = await PostgresLeases.open(db)
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


__all__ = ["PostgresStorage"]
