"""The many-replica backend: every table in one PostgreSQL database, shared by every replica."""

from __future__ import annotations

from service.storage.postgres.database import Database
from service.storage.postgres.deliveries import PostgresDeliveries
from service.storage.postgres.events import PostgresEventLog
from service.storage.postgres.leases import PostgresLeases
from service.storage.postgres.queue import PostgresJobQueue
from service.storage.postgres.retention import PostgresRetention


class PostgresStorage:
    def __init__(
        self,
        db: Database,
        queue: PostgresJobQueue,
        events: PostgresEventLog,
        leases: PostgresLeases,
        deliveries: PostgresDeliveries,
    ) -> None:
        self._db = db
        self.queue = queue
        self.events = events
        self.leases = leases
        self.deliveries = deliveries
        self.retention = PostgresRetention(db)

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        pool_size: int,
        outbox: bool,
        rejected_body_max_bytes: int,
        rejected_max_count: int,
        rejected_max_bytes: int,
    ) -> PostgresStorage:
        db = await Database.open(url, pool_size=pool_size)
        try:
            queue = await PostgresJobQueue.open(db)
            events = await PostgresEventLog.open(
                db,
                outbox=outbox,
                rejected_body_max_bytes=rejected_body_max_bytes,
                rejected_max_count=rejected_max_count,
                rejected_max_bytes=rejected_max_bytes,
            )
            leases = await PostgresLeases.open(db)
            deliveries = await PostgresDeliveries.open(db)
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


__all__ = ["PostgresStorage"]
