"""Outgoing webhook deliveries on PostgreSQL, shared by every replica.

A claim locks the rows it takes with ``FOR UPDATE SKIP LOCKED``: replicas claiming at the same
moment each get other deliveries and never wait for one another, and the lease they write keeps
a delivery theirs until it runs out.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

import asyncpg

from service.storage.groupcommit import GroupCommit
from service.storage.postgres.database import Database, Migration
from service.storage.protocol import DELIVERY_STATES, Delivery, FeedPosition, NewDelivery

MIGRATIONS = (
    Migration(
        1,
        """
        CREATE TABLE deliveries (
            seq BIGSERIAL PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            job_id TEXT,
            event_id TEXT NOT NULL,
            event_type TEXT NOT NULL,
            kind TEXT NOT NULL,
            url TEXT NOT NULL,
            origin TEXT NOT NULL,
            chain TEXT NOT NULL,
            content_type TEXT NOT NULL,
            body BYTEA NOT NULL,
            state TEXT NOT NULL DEFAULT 'pending',
            attempts INTEGER NOT NULL DEFAULT 0,
            last_status INTEGER,
            last_error TEXT,
            created_at DOUBLE PRECISION NOT NULL,
            next_attempt_at DOUBLE PRECISION NOT NULL,
            delivered_at DOUBLE PRECISION,
            lease_owner TEXT,
            lease_until DOUBLE PRECISION
        );
        CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE state = 'pending';
        CREATE INDEX deliveries_chain ON deliveries (chain, seq) WHERE state = 'pending';
        CREATE INDEX deliveries_by_job ON deliveries (job_id, seq);
        CREATE INDEX deliveries_by_state ON deliveries (state, created_at);
        CREATE TABLE delivery_bodies (
            event_id TEXT PRIMARY KEY,
            content_type TEXT NOT NULL,
            body BYTEA NOT NULL,
            kept_at DOUBLE PRECISION NOT NULL
        );
        CREATE TABLE delivery_fanout (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            xid BIGINT NOT NULL,
            seq BIGINT NOT NULL,
            since DOUBLE PRECISION NOT NULL
        )
        """,
    ),
)

_COLUMNS = (
    "seq, id, job_id, event_id, event_type, kind, url, origin, content_type, body, state,"
    " attempts, last_status, last_error, created_at, next_attempt_at, delivered_at"
)
_INSERT = (
    "INSERT INTO deliveries (id, job_id, event_id, event_type, kind, url, origin, chain,"
    " content_type, body, created_at, next_attempt_at)"
    " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],"
    " $6::text[], $7::text[], $8::text[], $9::text[], $10::bytea[], $11::float8[], $11::float8[])"
    " ON CONFLICT (id) DO NOTHING"
)
_BATCH = 64
# The first pending delivery of each chain. Grouped, not an anti-join per candidate: on a table not
# yet analysed (a burst into a fresh one) the planner estimates one pending row and runs NOT
# EXISTS as a nested loop over every pending row, seconds per call at a few thousand; this costs
# one pass over the pending rows whatever the statistics say.
_HEADS = "heads AS (SELECT MIN(seq) AS seq FROM deliveries WHERE state = 'pending' GROUP BY chain)"


class _Outcome(NamedTuple):
    """One attempt's outcome, as the columns it sets."""

    delivery_id: str
    owner: str
    state: str
    status: int | None
    error: str | None
    retry_at: float | None  # None keeps next_attempt_at
    delivered_at: float | None


class PostgresDeliveries:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._bodies: GroupCommit[tuple[str, str, bytes, float], None] = GroupCommit(
            self._commit_bodies, name="delivery-body-writer", max_rows=_BATCH
        )
        # Outcomes of many attempts share one transaction (one WAL flush) per batch.
        self._outcomes: GroupCommit[_Outcome, bool] = GroupCommit(
            self._commit_outcomes, name="delivery-outcome-writer", max_rows=_BATCH
        )

    @classmethod
    async def open(cls, db: Database) -> PostgresDeliveries:
        await db.migrate("deliveries", MIGRATIONS)
        return cls(db)

    async def close(self) -> None:
        await self._bodies.close()
        await self._outcomes.close()

    # --- fan-out ----------------------------------------------------------------------------

    async def keep_body(self, event_id: str, content_type: str, body: bytes, *, now: float) -> None:
        await self._bodies.submit((event_id, content_type, body, now))

    async def _commit_bodies(
        self, batch: list[tuple[str, str, bytes, float]]
    ) -> list[Exception | None]:
        async with self._db.connection() as conn:
            await conn.execute(
                "INSERT INTO delivery_bodies (event_id, content_type, body, kept_at)"
                " SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::float8[])"
                " ON CONFLICT (event_id) DO NOTHING",
                *(list(column) for column in zip(*batch, strict=True)),
            )
        return [None] * len(batch)

    async def bodies(self, event_ids: Iterable[str]) -> dict[str, tuple[str, bytes]]:
        ids = list(event_ids)
        if not ids:
            return {}
        async with self._db.connection() as conn:
            rows = await conn.fetch(
                "SELECT event_id, content_type, body FROM delivery_bodies"
                " WHERE event_id = ANY($1::text[])",
                ids,
            )
        return {row[0]: (row[1], bytes(row[2])) for row in rows}

    async def fanout_position(self, *, now: float) -> tuple[FeedPosition, float]:
        async with self._db.connection() as conn:
            await conn.execute(
                "INSERT INTO delivery_fanout (id, xid, seq, since) VALUES (1, 0, 0, $1)"
                " ON CONFLICT (id) DO NOTHING",
                now,
            )
            row = await conn.fetchrow("SELECT xid, seq, since FROM delivery_fanout")
        assert row is not None
        return (int(row[0]), int(row[1])), float(row[2])

    async def fan_out(
        self, deliveries: Sequence[NewDelivery], position: FeedPosition, *, now: float
    ) -> None:
        async with self._db.transaction() as conn:
            if deliveries:
                await conn.execute(
                    _INSERT,
                    [d.id for d in deliveries],
                    [d.job_id for d in deliveries],
                    [d.event_id for d in deliveries],
                    [d.event_type for d in deliveries],
                    [d.kind for d in deliveries],
                    [d.url for d in deliveries],
                    [d.origin for d in deliveries],
                    [d.chain for d in deliveries],
                    [d.content_type for d in deliveries],
                    [d.body for d in deliveries],
                    [now] * len(deliveries),
                )
            await conn.execute(
                "UPDATE delivery_fanout SET xid = $1, seq = $2 WHERE (xid, seq) < ($1, $2)",
                *position,
            )

    # --- sending ----------------------------------------------------------------------------

    async def due(
        self, *, now: float, limit: int, skip_origins: Iterable[str] = ()
    ) -> list[tuple[str, str]]:
        async with self._db.connection() as conn:
            rows = await conn.fetch(
                f"WITH {_HEADS} SELECT d.id, d.origin FROM heads JOIN deliveries d USING (seq)"
                " WHERE d.next_attempt_at <= $1 AND (d.lease_until IS NULL OR d.lease_until <= $1)"
                " AND NOT (d.origin = ANY($2::text[]))"
                " ORDER BY d.next_attempt_at, d.seq LIMIT $3",
                now,
                list(skip_origins),
                limit,
            )
        return [(row[0], row[1]) for row in rows]

    async def claim(
        self, ids: Sequence[str], owner: str, *, now: float, lease_seconds: float
    ) -> list[Delivery]:
        if not ids:
            return []
        async with self._db.connection() as conn:
            rows = await conn.fetch(
                "UPDATE deliveries SET lease_owner = $2, lease_until = $3"
                " WHERE id IN (SELECT id FROM deliveries WHERE id = ANY($1::text[])"
                " AND state = 'pending' AND (lease_until IS NULL OR lease_until <= $4)"
                f" FOR UPDATE SKIP LOCKED) RETURNING {_COLUMNS}",
                list(ids),
                owner,
                now + lease_seconds,
                now,
            )
        return sorted((_delivery(row) for row in rows), key=lambda d: d.seq)

    async def delivered(self, delivery_id: str, owner: str, *, status: int, now: float) -> bool:
        return await self._outcomes.submit(
            _Outcome(delivery_id, owner, "delivered", status, None, None, now)
        )

    async def failed(
        self,
        delivery_id: str,
        owner: str,
        *,
        status: int | None,
        error: str,
        retry_at: float | None,
    ) -> bool:
        state = "pending" if retry_at is not None else "dead"
        return await self._outcomes.submit(
            _Outcome(delivery_id, owner, state, status, error, retry_at, None)
        )

    async def _commit_outcomes(self, batch: list[_Outcome]) -> list[bool | Exception]:
        # One statement for the whole batch: one round trip, one commit.
        async with self._db.connection() as conn:
            rows = await conn.fetch(
                "UPDATE deliveries d SET state = u.state, last_status = u.status,"
                " last_error = u.error, next_attempt_at = COALESCE(u.retry_at, d.next_attempt_at),"
                " delivered_at = u.delivered_at, attempts = d.attempts + 1,"
                " lease_owner = NULL, lease_until = NULL"
                " FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::text[],"
                " $6::float8[], $7::float8[]) AS u(id, owner, state, status, error, retry_at,"
                " delivered_at)"
                " WHERE d.id = u.id AND d.lease_owner = u.owner AND d.state = 'pending'"
                " RETURNING d.id",
                *(list(column) for column in zip(*batch, strict=True)),
            )
        recorded = {row[0] for row in rows}
        return [outcome.delivery_id in recorded for outcome in batch]

    async def next_due(self) -> float | None:
        async with self._db.connection() as conn:
            value = await conn.fetchval(
                f"WITH {_HEADS} SELECT MIN(GREATEST(d.next_attempt_at, COALESCE(d.lease_until, 0)))"
                " FROM heads JOIN deliveries d USING (seq)"
            )
        return None if value is None else float(value)

    # --- operators --------------------------------------------------------------------------

    async def get(self, delivery_id: str) -> Delivery | None:
        async with self._db.connection() as conn:
            row = await conn.fetchrow(
                f"SELECT {_COLUMNS} FROM deliveries WHERE id = $1", delivery_id
            )
        return None if row is None else _delivery(row)

    async def for_job(self, job_id: str) -> list[Delivery]:
        async with self._db.connection() as conn:
            rows = await conn.fetch(
                f"SELECT {_COLUMNS} FROM deliveries WHERE job_id = $1 ORDER BY seq", job_id
            )
        return [_delivery(row) for row in rows]

    async def redeliver(self, delivery_id: str, *, now: float) -> Delivery | None:
        async with self._db.connection() as conn:
            row = await conn.fetchrow(
                "UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_at = $2,"
                " delivered_at = NULL, lease_owner = NULL, lease_until = NULL"
                f" WHERE id = $1 AND state IN ('dead', 'delivered') RETURNING {_COLUMNS}",
                delivery_id,
                now,
            )
        return None if row is None else _delivery(row)

    async def counts(self) -> dict[str, int]:
        async with self._db.connection() as conn:
            rows = await conn.fetch("SELECT state, COUNT(*) FROM deliveries GROUP BY state")
        return {**dict.fromkeys(DELIVERY_STATES, 0), **{row[0]: int(row[1]) for row in rows}}

    async def job_counts(self, job_id: str) -> dict[str, int]:
        async with self._db.connection() as conn:
            rows = await conn.fetch(
                "SELECT state, COUNT(*) FROM deliveries WHERE job_id = $1 GROUP BY state", job_id
            )
        return {**dict.fromkeys(DELIVERY_STATES, 0), **{row[0]: int(row[1]) for row in rows}}

    async def oldest_pending_created_at(self) -> float | None:
        async with self._db.connection() as conn:
            value = await conn.fetchval(
                "SELECT MIN(created_at) FROM deliveries WHERE state = 'pending'"
            )
        return None if value is None else float(value)

    async def prune(self, *, before: float, limit: int) -> dict[str, int]:
        async with self._db.transaction() as conn:
            done = await conn.fetchval(
                "WITH gone AS (DELETE FROM deliveries WHERE seq IN (SELECT seq FROM deliveries"
                " WHERE state IN ('delivered', 'dead') AND created_at < $1 LIMIT $2)"
                " RETURNING 1) SELECT COUNT(*) FROM gone",
                before,
                limit,
            )
            bodies = await conn.fetchval(
                "WITH gone AS (DELETE FROM delivery_bodies WHERE event_id IN (SELECT event_id"
                " FROM delivery_bodies WHERE kept_at < $1 LIMIT $2) RETURNING 1)"
                " SELECT COUNT(*) FROM gone",
                before,
                limit,
            )
        deleted = {"deliveries": int(done), "delivery_bodies": int(bodies)}
        return {table: rows for table, rows in deleted.items() if rows}


def _delivery(row: asyncpg.Record) -> Delivery:
    return Delivery(
        seq=row["seq"],
        id=row["id"],
        job_id=row["job_id"],
        event_id=row["event_id"],
        event_type=row["event_type"],
        kind=row["kind"],
        url=row["url"],
        origin=row["origin"],
        content_type=row["content_type"],
        body=bytes(row["body"]),
        state=row["state"],
        attempts=row["attempts"],
        last_status=row["last_status"],
        last_error=row["last_error"],
        created_at=row["created_at"],
        next_attempt_at=row["next_attempt_at"],
        delivered_at=row["delivered_at"],
    )
