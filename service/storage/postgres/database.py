"""The PostgreSQL backend's connection pool, its error mapping, and versioned migrations.

Every call takes a connection from one asyncpg pool (``CIRELAY_DATABASE_POOL_SIZE``). Errors that
mean the database cannot serve now (connection lost or refused, server shutting down or starting
up, out of resources) become ``StorageUnavailable``; a value PostgreSQL cannot take (a NUL in
text, an integer beyond 64 bits: a data exception) is ``UnstorableValue``; an SQL or constraint
error is a bug and propagates as it is. Replicas starting at the same moment migrate one at a
time under an advisory lock.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TypeAlias

import asyncpg
import asyncpg.pool
import structlog

from service.storage.errors import StorageUnavailable, UnstorableValue

log = structlog.get_logger(__name__)

# SQLSTATE classes of "not now": connection exception, insufficient resources, operator
# intervention (admin shutdown, cannot connect now), system error.
_UNAVAILABLE_CLASSES = ("08", "53", "57", "58")
# Key of the advisory lock held while migrating (any constant shared by every replica).
_MIGRATION_LOCK = 0x6369_7265_6C61_7901  # "cirelay" + 1
# A pool connection is waited for at most this long before the call is unavailable.
_ACQUIRE_TIMEOUT_SECONDS = 10.0


# What ``connection()`` and ``transaction()`` hand out: a pooled asyncpg connection.
Connection: TypeAlias = "asyncpg.pool.PoolConnectionProxy[asyncpg.Record]"


@dataclass(frozen=True)
class Migration:
    version: int
    sql: str  # one or more statements, run in one transaction


class Database:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @classmethod
    async def open(cls, url: str, *, pool_size: int) -> Database:
        try:
            pool = await asyncpg.create_pool(
                url,
                min_size=1,
                max_size=pool_size,
                # Statements are few and fixed: prepared once per connection and reused.
                statement_cache_size=256,
                timeout=_ACQUIRE_TIMEOUT_SECONDS,  # to connect
                reset=_keep_session,
            )
        except Exception as exc:
            mapped = _mapped(exc)
            if mapped is None:
                raise
            raise mapped from exc
        return cls(pool)

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.pool.close(), timeout=_ACQUIRE_TIMEOUT_SECONDS)
        except TimeoutError:
            self.pool.terminate()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        """A pooled connection in autocommit mode: each statement is its own transaction."""
        async with (
            _mapped_errors(),
            self.pool.acquire(timeout=_ACQUIRE_TIMEOUT_SECONDS) as conn,
        ):
            yield conn

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        """A pooled connection inside ``BEGIN`` … ``COMMIT`` (rolled back on error)."""
        async with (
            _mapped_errors(),
            self.pool.acquire(timeout=_ACQUIRE_TIMEOUT_SECONDS) as conn,
            conn.transaction(),
        ):
            yield conn

    async def migrate(self, component: str, migrations: Sequence[Migration]) -> None:
        """Apply the component's migrations not yet applied, all in one transaction that holds
        the migration lock: a replica starting meanwhile waits, then finds them applied."""
        async with self.transaction() as conn:
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " component TEXT NOT NULL, version INTEGER NOT NULL,"
                " PRIMARY KEY (component, version))"
            )
            current = await conn.fetchval(
                "SELECT COALESCE(MAX(version), 0) FROM schema_migrations WHERE component = $1",
                component,
            )
            for migration in sorted(migrations, key=lambda m: m.version):
                if migration.version <= current:
                    continue
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (component, version) VALUES ($1, $2)",
                    component,
                    migration.version,
                )
                log.info("migration_applied", component=component, version=migration.version)


def unmatchable(*values: str | None) -> bool:
    """Whether a lookup by these values can find nothing: PostgreSQL text cannot hold a NUL, so no
    stored row has one, and sending it would be a data error. Answering "none" agrees with SQLite,
    which takes the NUL and finds no row either (a 404 or an empty page, not a 400)."""
    return any(value is not None and "\x00" in value for value in values)


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Nothing to reset when a connection goes back to the pool: no call leaves session state
    behind (advisory locks are transaction-scoped, a LISTEN is undone by its owner, nothing uses
    SET), and asyncpg still rolls back a transaction left open. asyncpg's default reset (UNLISTEN
    *, RESET ALL, …) is a round trip on every release: claim-to-done ran 1.2-1.5x faster without
    it."""


@asynccontextmanager
async def _mapped_errors() -> AsyncIterator[None]:
    try:
        yield
    except Exception as exc:
        mapped = _mapped(exc)
        if mapped is None:
            raise
        raise mapped from exc


def _mapped(exc: BaseException) -> StorageUnavailable | UnstorableValue | None:
    if isinstance(exc, asyncpg.DataError):
        # Raised by the server (SQLSTATE class 22) or by asyncpg encoding an argument: the
        # input's fault, so neither a 500 nor a retry (a Pulsar message would loop forever).
        return UnstorableValue(f"postgres: {exc}")
    if isinstance(exc, asyncpg.PostgresError):
        state = exc.sqlstate or ""
        if state.startswith(_UNAVAILABLE_CLASSES):
            return StorageUnavailable(f"postgres: {state} {exc}")
        return None
    if isinstance(exc, (OSError, TimeoutError, asyncpg.InterfaceError)):
        # Refused or reset connections, a pool that could not hand out a connection in time,
        # a connection closed under the call.
        return StorageUnavailable(f"postgres: {type(exc).__name__}: {exc}")
    return None
