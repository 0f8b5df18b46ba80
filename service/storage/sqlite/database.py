"""The SQLite backend's database: one file in WAL mode, versioned migrations per component.

One connection per process, serialised by a lock: SQLite has a single writer anyway, and sharing
one connection between tasks without a lock would let one task's statements land inside another
task's open transaction. Several processes may share the file (WAL + busy timeout).

Checkpoints run on a second connection, not in whichever commit crosses SQLite's automatic
threshold: a checkpoint copies the WAL into the database file and syncs it, and done inside a
commit it stalls every caller waiting on that connection for the sync (the p99 of callback
ingestion went from ~5 ms to over 20 ms). A passive checkpoint never blocks the writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Sequence, Sized
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiosqlite
import structlog

from service.storage.errors import StorageUnavailable

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Migration:
    version: int
    sql: str  # one or more statements, run in one transaction


# How often the WAL is copied back into the database file. At ~2,000 WAL pages written per
# second under full callback load, the WAL stays under ~10 MB.
CHECKPOINT_SECONDS = 1.0
# A WAL that grew during a burst is cut back to this size when the writer next starts it over.
_WAL_SIZE_LIMIT = 64 * 1024 * 1024
_WAL_SWITCH_ATTEMPTS = 20


class Database:
    def __init__(
        self,
        conn: aiosqlite.Connection,
        checkpointer: aiosqlite.Connection | None,
        checkpoint_seconds: float,
    ) -> None:
        self.conn = conn
        self._lock = asyncio.Lock()
        self._checkpointer = checkpointer
        self._checkpoints = (
            asyncio.create_task(
                _checkpoint_forever(checkpointer, checkpoint_seconds), name="sqlite-checkpoint"
            )
            if checkpointer is not None
            else None
        )

    @classmethod
    async def open(cls, path: str, *, checkpoint_seconds: float = CHECKPOINT_SECONDS) -> Database:
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so transactions are explicit.
        conn = await aiosqlite.connect(path, isolation_level=None)
        try:
            await _configure(conn)
        except BaseException:
            # Its thread would outlive everything else and keep the process from exiting.
            await conn.close()
            raise
        checkpointer = None
        if path != ":memory:":
            checkpointer = await aiosqlite.connect(path, isolation_level=None)
        return cls(conn, checkpointer, checkpoint_seconds)

    async def close(self) -> None:
        if self._checkpoints is not None:
            self._checkpoints.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checkpoints
        if self._checkpointer is not None:
            await self._checkpointer.close()
        await self.conn.close()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """``BEGIN IMMEDIATE`` … ``COMMIT`` (rollback on error), exclusive within this process."""
        async with self._lock, _unavailable_on_error():
            await self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                with contextlib.suppress(sqlite3.Error, ValueError):
                    await self.conn.execute("ROLLBACK")
                raise
            await self.conn.execute("COMMIT")

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[aiosqlite.Connection]:
        """The connection outside any transaction, never interleaved with another task's: for
        reads, and for single statements that autocommit (one statement, one transaction)."""
        async with self._lock, _unavailable_on_error():
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


async def _configure(conn: aiosqlite.Connection) -> None:
    conn.row_factory = sqlite3.Row
    # First: processes opening the file at once wait for each other's locks.
    await conn.execute("PRAGMA busy_timeout=10000")
    for attempt in range(_WAL_SWITCH_ATTEMPTS):
        try:
            # WAL is a property of the file: only its first opening switches. Processes doing
            # that at once can each hold a shared lock while asking for the exclusive one, which
            # SQLite answers "locked" at once instead of waiting: try again shortly.
            await conn.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError:
            if attempt == _WAL_SWITCH_ATTEMPTS - 1:
                raise
            await asyncio.sleep(0.01 * (attempt + 1))
    await conn.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes in WAL
    await conn.execute("PRAGMA foreign_keys=ON")
    await conn.execute("PRAGMA wal_autocheckpoint=0")  # the checkpointer's job, see above
    await conn.execute(f"PRAGMA journal_size_limit={_WAL_SIZE_LIMIT}")
    await conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " component TEXT NOT NULL, version INTEGER NOT NULL,"
        " PRIMARY KEY (component, version))"
    )


async def _checkpoint_forever(conn: aiosqlite.Connection, seconds: float) -> None:
    while True:
        await asyncio.sleep(seconds)
        try:
            # Passive: copies what no reader still needs, never waits for or blocks a writer.
            await conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:  # e.g. the disk is full: the next round tries again
            log.warning("sqlite_checkpoint_failed", error=str(exc))


@asynccontextmanager
async def _unavailable_on_error() -> AsyncIterator[None]:
    """The database failing (locked past the busy timeout, disk full or failing, connection
    closed) is ``StorageUnavailable`` to the rest of the service; a constraint or SQL error is a
    bug and propagates as it is."""
    try:
        yield
    except (sqlite3.OperationalError, sqlite3.InternalError) as exc:
        raise StorageUnavailable(f"sqlite: {exc}") from exc
    except ValueError as exc:  # aiosqlite: "no active connection" once closed
        if "connection" not in str(exc):
            raise
        raise StorageUnavailable(f"sqlite: {exc}") from exc


def marks(values: Sized) -> str:
    """``?, ?, …``: one parameter mark per value, for an ``IN (…)`` list."""
    return ", ".join("?" * len(values))


def _statements(sql: str) -> list[str]:
    return [s.strip() for s in sql.split(";") if s.strip()]
