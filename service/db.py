"""The service database: one SQLite file in WAL mode, versioned migrations per component.

One connection per process, serialised by a lock: SQLite has a single writer anyway, and sharing
one connection between tasks without a lock would let one task's statements land inside another
task's open transaction. Several processes may share the file (WAL + busy timeout).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiosqlite
import structlog

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Migration:
    version: int
    sql: str  # one or more statements, run in one transaction


class Database:
    def __init__(self, conn: aiosqlite.Connection) -> None:
        self.conn = conn
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: str) -> Database:
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so transactions are explicit.
        conn = await aiosqlite.connect(path, isolation_level=None)
        conn.row_factory = sqlite3.Row
        await conn.execute("PRAGMA journal_mode=WAL")
        await conn.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes in WAL
        await conn.execute("PRAGMA busy_timeout=10000")
        await conn.execute("PRAGMA foreign_keys=ON")
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " component TEXT NOT NULL, version INTEGER NOT NULL,"
            " PRIMARY KEY (component, version))"
        )
        return cls(conn)

    async def close(self) -> None:
        await self.conn.close()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """``BEGIN IMMEDIATE`` … ``COMMIT`` (rollback on error), exclusive within this process."""
        async with self._lock:
            await self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                await self.conn.execute("ROLLBACK")
                raise
            await self.conn.execute("COMMIT")

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[aiosqlite.Connection]:
        """The connection outside any transaction, never interleaved with another task's: for
        reads, and for single statements that autocommit (one statement, one transaction)."""
        async with self._lock:
            yield self.conn

    async def migrate(self, component: str, migrations: Sequence[Migration]) -> None:
        """Apply the component's migrations not yet applied, each in its own transaction."""
        async with self.transaction() as conn:
            cur = await conn.execute(
                "SELECT COALESCE(MAX(version), 0) FROM schema_migrations WHERE component = ?",
                (component,),
            )
            row = await cur.fetchone()
        current = int(row[0]) if row else 0
        for migration in sorted(migrations, key=lambda m: m.version):
            if migration.version <= current:
                continue
            async with self.transaction() as conn:
                # Another process may have applied it while we waited for the write lock.
                cur = await conn.execute(
                    "SELECT 1 FROM schema_migrations WHERE component = ? AND version = ?",
                    (component, migration.version),
                )
                if await cur.fetchone():
                    continue
                for statement in _statements(migration.sql):
                    await conn.execute(statement)
                await conn.execute(
                    "INSERT INTO schema_migrations (component, version) VALUES (?, ?)",
                    (component, migration.version),
                )
            log.info("migration_applied", component=component, version=migration.version)


def _statements(sql: str) -> list[str]:
    return [s.strip() for s in sql.split(";") if s.strip()]
