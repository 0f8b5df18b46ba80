"""Outgoing webhook deliveries on SQLite: the deliveries table, kept callback bodies, the fan-out
position. Claims are one ``UPDATE … RETURNING`` inside ``BEGIN IMMEDIATE``, so processes sharing
the file never lease one delivery twice."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import aiosqlite

from service.storage.groupcommit import GroupCommit
from service.storage.protocol import DELIVERY_STATES, Delivery, FeedPosition, NewDelivery
from service.storage.sqlite.database import Database, Migration, marks

MIGRATIONS = (
    Migration(
        1,
        """
        CREATE TABLE deliveries (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            job_id TEXT,
            event_id TEXT NOT NULL,
            event_type TEXT NOT NULL,
            kind TEXT NOT NULL,
            url TEXT NOT NULL,
            origin TEXT NOT NULL,
            chain TEXT NOT NULL,
            content_type TEXT NOT NULL,
            body BLOB NOT NULL,
            state TEXT NOT NULL DEFAULT 'pending',
            attempts INTEGER NOT NULL DEFAULT 0,
            last_status INTEGER,
            last_error TEXT,
            created_at REAL NOT NULL,
            next_attempt_at REAL NOT NULL,
            delivered_at REAL,
            lease_owner TEXT,
            lease_until REAL
        );
        CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE state = 'pending';
        CREATE INDEX deliveries_chain ON deliveries (chain, seq) WHERE state = 'pending';
        CREATE INDEX deliveries_by_job ON deliveries (job_id, seq);
        CREATE INDEX deliveries_by_state ON deliveries (state, created_at);
        CREATE TABLE delivery_bodies (
            event_id TEXT PRIMARY KEY,
            content_type TEXT NOT NULL,
            body BLOB NOT NULL,
            kept_at REAL NOT NULL
        );
        CREATE TABLE delivery_fanout (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            xid INTEGER NOT NULL,
            seq INTEGER NOT NULL,
            since REAL NOT NULL
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
    " content_type, body, created_at, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (id) DO NOTHING"
)
_CLAIMABLE = "state = 'pending' AND (lease_until IS NULL OR lease_until <= ?)"
_BATCH = 64


# One attempt's outcome: the SET clause, its values, then the delivery id and lease owner.
_Outcome = tuple[str, tuple[Any, ...], str, str]


class SQLiteDeliveries:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._bodies: GroupCommit[tuple[str, str, bytes, float], None] = GroupCommit(
            self._commit_bodies, name="delivery-body-writer", max_rows=_BATCH
        )
        # Outcomes of many attempts share one transaction: at full speed, one commit per batch
        # instead of one per delivery.
        self._outcomes: GroupCommit[_Outcome, bool] = GroupCommit(
            self._commit_outcomes, name="delivery-outcome-writer", max_rows=_BATCH
        )

    @classmethod
    async def open(cls, db: Database) -> SQLiteDeliveries:
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
        async with self._db.transaction() as conn:
            await conn.executemany(
                "INSERT INTO delivery_bodies (event_id, content_type, body, kept_at)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (event_id) DO NOTHING",
                batch,
            )
        return [None] * len(batch)

    async def bodies(self, event_ids: Iterable[str]) -> dict[str, tuple[str, bytes]]:
        ids = list(event_ids)
        if not ids:
            return {}
        async with self._db.exclusive() as conn:
            rows = await conn.execute_fetchall(
                "SELECT event_id, content_type, body FROM delivery_bodies"
                f" WHERE event_id IN ({marks(ids)})",
                ids,
            )
        return {row[0]: (row[1], bytes(row[2])) for row in rows}

    async def fanout_position(self, *, now: float) -> tuple[FeedPosition, float]:
        async with self._db.transaction() as conn:
            await conn.execute(
                "INSERT INTO delivery_fanout (id, xid, seq, since) VALUES (1, 0, 0, ?)"
                " ON CONFLICT (id) DO NOTHING",
                (now,),
            )
            rows = list(await conn.execute_fetchall("SELECT xid, seq, since FROM delivery_fanout"))
        return (int(rows[0][0]), int(rows[0][1])), float(rows[0][2])

    async def fan_out(
        self, deliveries: Sequence[NewDelivery], position: FeedPosition, *, now: float
    ) -> None:
        async with self._db.transaction() as conn:
            await conn.executemany(
                _INSERT,
                [
                    (
                        d.id,
                        d.job_id,
                        d.event_id,
                        d.event_type,
                        d.kind,
                        d.url,
                        d.origin,
                        d.chain,
                        d.content_type,
                        d.body,
                        now,
                        now,
                    )
                    for d in deliveries
                ],
            )
            await conn.execute(
                "UPDATE delivery_fanout SET xid = ?, seq = ? WHERE (xid, seq) < (?, ?)",
                (*position, *position),
            )

    # --- sending ----------------------------------------------------------------------------

    async def due(
        self, *, now: float, limit: int, skip_origins: Iterable[str] = ()
    ) -> list[tuple[str, str]]:
        skipped = list(skip_origins)
        skip = f" AND d.origin NOT IN ({marks(skipped)})" if skipped else ""
        async with self._db.exclusive() as conn:
            rows = await conn.execute_fetchall(
                "SELECT d.id, d.origin FROM deliveries d WHERE d.state = 'pending'"
                " AND d.next_attempt_at <= ? AND (d.lease_until IS NULL OR d.lease_until <= ?)"
                f"{skip} AND NOT EXISTS (SELECT 1 FROM deliveries e WHERE e.chain = d.chain"
                " AND e.state = 'pending' AND e.seq < d.seq)"
                " ORDER BY d.next_attempt_at, d.seq LIMIT ?",
                (now, now, *skipped, limit),
            )
        return [(row[0], row[1]) for row in rows]

    async def claim(
        self, ids: Sequence[str], owner: str, *, now: float, lease_seconds: float
    ) -> list[Delivery]:
        if not ids:
            return []
        async with self._db.transaction() as conn:
            rows = await conn.execute_fetchall(
                "UPDATE deliveries SET lease_owner = ?, lease_until = ?"
                f" WHERE id IN ({marks(ids)}) AND {_CLAIMABLE} RETURNING {_COLUMNS}",
                (owner, now + lease_seconds, *ids, now),
            )
        return sorted((_delivery(row) for row in rows), key=lambda d: d.seq)

    async def delivered(self, delivery_id: str, owner: str, *, status: int, now: float) -> bool:
        return await self._finish_attempt(
            "state = 'delivered', last_status = ?, last_error = NULL, delivered_at = ?",
            (status, now),
            delivery_id,
            owner,
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
        if retry_at is None:
            return await self._finish_attempt(
                "state = 'dead', last_status = ?, last_error = ?",
                (status, error),
                delivery_id,
                owner,
            )
        return await self._finish_attempt(
            "last_status = ?, last_error = ?, next_attempt_at = ?",
            (status, error, retry_at),
            delivery_id,
            owner,
        )

    async def _finish_attempt(
        self, assignments: str, values: tuple[Any, ...], delivery_id: str, owner: str
    ) -> bool:
        return await self._outcomes.submit((assignments, values, delivery_id, owner))

    async def _commit_outcomes(self, batch: list[_Outcome]) -> list[bool | Exception]:
        results: list[bool | Exception] = []
        async with self._db.transaction() as conn:
            for assignments, values, delivery_id, owner in batch:
                cur = await conn.execute(
                    f"UPDATE deliveries SET {assignments}, attempts = attempts + 1,"
                    " lease_owner = NULL, lease_until = NULL"
                    " WHERE id = ? AND lease_owner = ? AND state = 'pending'",
                    (*values, delivery_id, owner),
                )
                results.append(cur.rowcount == 1)
        return results

    async def next_due(self) -> float | None:
        async with self._db.exclusive() as conn:
            rows = list(
                await conn.execute_fetchall(
                    "SELECT MIN(MAX(d.next_attempt_at, COALESCE(d.lease_until, 0)))"
                    " FROM deliveries d WHERE d.state = 'pending' AND NOT EXISTS (SELECT 1"
                    " FROM deliveries e WHERE e.chain = d.chain AND e.state = 'pending'"
                    " AND e.seq < d.seq)"
                )
            )
        return None if rows[0][0] is None else float(rows[0][0])

    # --- operators --------------------------------------------------------------------------

    async def get(self, delivery_id: str) -> Delivery | None:
        async with self._db.exclusive() as conn:
            rows = list(
                await conn.execute_fetchall(
                    f"SELECT {_COLUMNS} FROM deliveries WHERE id = ?", (delivery_id,)
                )
            )
        return _delivery(rows[0]) if rows else None

    async def for_job(self, job_id: str) -> list[Delivery]:
        async with self._db.exclusive() as conn:
            rows = await conn.execute_fetchall(
                f"SELECT {_COLUMNS} FROM deliveries WHERE job_id = ? ORDER BY seq", (job_id,)
            )
        return [_delivery(row) for row in rows]

    async def redeliver(self, delivery_id: str, *, now: float) -> Delivery | None:
        async with self._db.transaction() as conn:
            rows = list(
                await conn.execute_fetchall(
                    "UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_at = ?,"
                    " delivered_at = NULL, lease_owner = NULL, lease_until = NULL"
                    f" WHERE id = ? AND state IN ('dead', 'delivered') RETURNING {_COLUMNS}",
                    (now, delivery_id),
                )
            )
        return _delivery(rows[0]) if rows else None

    async def counts(self) -> dict[str, int]:
        async with self._db.exclusive() as conn:
            rows = await conn.execute_fetchall(
                "SELECT state, COUNT(*) FROM deliveries GROUP BY state"
            )
        return {**dict.fromkeys(DELIVERY_STATES, 0), **{row[0]: int(row[1]) for row in rows}}

    async def job_counts(self, job_id: str) -> dict[str, int]:
        async with self._db.exclusive() as conn:
            rows = await conn.execute_fetchall(
                "SELECT state, COUNT(*) FROM deliveries WHERE job_id = ? GROUP BY state",
                (job_id,),
            )
        return {**dict.fromkeys(DELIVERY_STATES, 0), **{row[0]: int(row[1]) for row in rows}}

    async def oldest_pending_created_at(self) -> float | None:
        async with self._db.exclusive() as conn:
            rows = list(
                await conn.execute_fetchall(
                    "SELECT MIN(created_at) FROM deliveries WHERE state = 'pending'"
                )
            )
        return None if rows[0][0] is None else float(rows[0][0])

    async def prune(self, *, before: float, limit: int) -> dict[str, int]:
        async with self._db.transaction() as conn:
            done = await conn.execute(
                "DELETE FROM deliveries WHERE seq IN (SELECT seq FROM deliveries"
                " WHERE state IN ('delivered', 'dead') AND created_at < ? LIMIT ?)",
                (before, limit),
            )
            bodies = await conn.execute(
                "DELETE FROM delivery_bodies WHERE event_id IN (SELECT event_id"
                " FROM delivery_bodies WHERE kept_at < ? LIMIT ?)",
                (before, limit),
            )
            deleted = {"deliveries": done.rowcount, "delivery_bodies": bodies.rowcount}
        return {table: rows for table, rows in deleted.items() if rows}


def _delivery(row: aiosqlite.Row) -> Delivery:
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
