"""Leases on PostgreSQL: one row per named unit of background work, taken or renewed atomically."""

from __future__ import annotations

from service.storage.postgres.database import Database, Migration

MIGRATIONS = (
    Migration(
        1,
        """
        CREATE TABLE leases (
            name TEXT PRIMARY KEY,
            owner TEXT NOT NULL,
            expires_at DOUBLE PRECISION NOT NULL
        )
        """,
    ),
)


class PostgresLeases:
    def __init__(self, db: Database) -> None:
        self._db = db

    @classmethod
    async def open(cls, db: Database) -> PostgresLeases:
        await db.migrate("leases", MIGRATIONS)
        return cls(db)

    async def acquire(self, name: str, owner: str, *, ttl: float, now: float) -> bool:
        # One statement: the row lock taken by ON CONFLICT serialises replicas racing for it.
        async with self._db.connection() as conn:
            holder = await conn.fetchval(
                "INSERT INTO leases (name, owner, expires_at) VALUES ($1, $2, $3)"
                " ON CONFLICT (name) DO UPDATE SET owner = excluded.owner,"
                " expires_at = excluded.expires_at"
                " WHERE leases.owner = excluded.owner OR leases.expires_at <= $4"
                " RETURNING owner",
                name,
                owner,
                now + ttl,
                now,
            )
        return holder is not None

    async def release(self, name: str, owner: str) -> None:
        async with self._db.connection() as conn:
            await conn.execute("DELETE FROM leases WHERE name = $1 AND owner = $2", name, owner)
