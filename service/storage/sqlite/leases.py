"""Leases on SQLite: one row per named unit of background work, taken or renewed atomically."""

from __future__ import annotations

from service.storage.sqlite.database import Database, Migration

MIGRATIONS = (
    Migration(
        1,
        """
        CREATE TABLE leases (
            name TEXT PRIMARY KEY,
            owner TEXT NOT NULL,
            expires_at REAL NOT NULL
        )
        """,
    ),
)


class SQLiteLeases:
    def __init__(self, db: Database) -> None:
        self._db = db

    @classmethod
    async def open(cls, db: Database) -> SQLiteLeases:
        await db.migrate("leases", MIGRATIONS)
        return cls(db)

    async def acquire(self, name: str, owner: str, *, ttl: float, now: float) -> bool:
        async with self._db.transaction() as conn:
            rows = await conn.execute_fetchall(
                "INSERT INTO leases (name, owner, expires_at) VALUES (?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET owner = excluded.owner,"
                " expires_at = excluded.expires_at"
                " WHERE leases.owner = excluded.owner OR leases.expires_at <= ?"
                " RETURNING owner",
                (name, owner, now + ttl, now),
            )
        return bool(list(rows))

    async def release(self, name: str, owner: str) -> None:
        async with self._db.transaction() as conn:
            await conn.execute("DELETE FROM leases WHERE name = ? AND owner = ?", (name, owner))
