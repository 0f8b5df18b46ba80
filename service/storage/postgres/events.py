"""The event log on PostgreSQL: events stored once by ``event_id`` across replicas, the feed, the
outbox, the rejected bodies.

Each replica batches its writes through group commit; replicas de-duplicate against each other
through the unique ``event_id`` (``INSERT … ON CONFLICT (event_id) DO NOTHING``: a replica storing
an event another one is still committing waits for that commit, then finds it a duplicate).

**The feed is gap-free by a transaction-id watermark** (the snapshot-xmin horizon). On PostgreSQL
a sequence value is taken when a row is inserted, not when its transaction commits: writer A takes
seq 10, writer B takes 11 and commits first, and a poller ordering by seq alone would move past 10
before A commits, never to see it. So every row carries the id of the transaction that wrote it
(``xid``: ``pg_current_xact_id()``, a 64-bit ``xid8`` that never wraps), the feed is ordered by
``(xid, seq)``, and a read serves only rows whose ``xid`` is below
``pg_snapshot_xmin(pg_current_snapshot())``, the oldest transaction still running anywhere on the
server when the read's snapshot was taken. Every transaction below that mark has ended, so each
row it will ever have is visible to the read; every transaction that commits later has an ``xid``
at or above the mark, so its rows sort after anything served. A cursor, ``(xid, seq)`` of the last
row returned, therefore never skips a row. The price: a transaction that has written (taken a
transaction id) and stays open anywhere on the server (any database, any client) holds the feed
back at its ``xid`` until it ends; open transactions that only read (a report, ``pg_dump``) take
no id and hold nothing back.

``seq`` follows the order events were handed over within a transaction; the rows are inserted in
``event_id`` order, so two replicas storing overlapping batches take their unique-index locks in
the same order and never deadlock.

The outbox is a flag on the event row (``unpublished``, found through a partial index), set by the
statement that inserts the event, and cleared once the broker acknowledged the event.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import asyncpg
import orjson

from service.storage.eventwrites import EventWrite, RejectWrite, Write, answers, rows_of, split
from service.storage.groupcommit import GroupCommit
from service.storage.postgres.database import Database, Migration, unmatchable
from service.storage.protocol import (
    FEED_START,
    Accounting,
    BatchProgress,
    FeedPosition,
    RejectedCallback,
)

MIGRATIONS = (
    Migration(
        1,
        """
        CREATE SEQUENCE events_seq AS BIGINT;
        CREATE TABLE events (
            seq BIGINT PRIMARY KEY DEFAULT nextval('events_seq'),
            xid XID8 NOT NULL DEFAULT pg_current_xact_id(),
            event_id TEXT NOT NULL UNIQUE,
            event_type TEXT NOT NULL,
            source TEXT NOT NULL,
            format TEXT,
            job_id TEXT,
            batch_id TEXT,
            cirelay_job_id TEXT,
            received_at TEXT NOT NULL,
            unpublished BOOLEAN,
            body TEXT NOT NULL
        );
        ALTER SEQUENCE events_seq OWNED BY events.seq;
        CREATE INDEX events_feed ON events (xid, seq);
        CREATE INDEX events_by_cirelay_job ON events (cirelay_job_id, xid, seq);
        CREATE INDEX events_by_job ON events (job_id, xid, seq);
        CREATE INDEX events_by_type ON events (event_type, xid, seq);
        CREATE INDEX events_outbox ON events (seq) WHERE unpublished;
        CREATE TABLE rejected_callbacks (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            received_at TEXT NOT NULL,
            source TEXT NOT NULL,
            reason TEXT NOT NULL,
            message TEXT NOT NULL,
            content_type TEXT NOT NULL,
            body_bytes INTEGER NOT NULL,
            body BYTEA NOT NULL
        )
        """,
    ),
    Migration(
        2,
        """
        CREATE TABLE batch_media (
            media_job_id TEXT PRIMARY KEY,
            cirelay_job_id TEXT NOT NULL,
            batch_id TEXT NOT NULL,
            accounted BOOLEAN NOT NULL DEFAULT FALSE
        );
        CREATE INDEX batch_media_open ON batch_media (cirelay_job_id, accounted, media_job_id);
        CREATE TABLE batch_progress (
            cirelay_job_id TEXT PRIMARY KEY,
            batch_id TEXT NOT NULL,
            page_token TEXT NOT NULL,
            complete BOOLEAN NOT NULL,
            sweep_token TEXT
        );
        -- Retention walks the events attached to no job, oldest first.
        CREATE INDEX events_unattached ON events (seq) WHERE cirelay_job_id IS NULL
        """,
    ),
)

# One statement text for every batch size (arrays, not a VALUES list per size). ``numbered``
# takes the batch's seq values in the order the events were handed over; the rows then go in by
# ``event_id`` so that replicas lock overlapping ids in one order (and the first of two copies in
# a batch is the one inserted).
_INSERT_EVENTS = """
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                         $6::text[], $7::text[], $8::text[], $9::text[])
        WITH ORDINALITY AS t(event_id, event_type, source, format, job_id, batch_id,
                             cirelay_job_id, received_at, body, ord)
), numbered AS (
    SELECT ord, nextval('events_seq') AS seq
    FROM generate_series(1::bigint, cardinality($1::text[])::bigint) AS ord
)
INSERT INTO events (seq, event_id, event_type, source, format, job_id, batch_id,
                    cirelay_job_id, received_at, unpublished, body)
SELECT n.seq, i.event_id, i.event_type, i.source, i.format, i.job_id,
       COALESCE(i.batch_id, m.batch_id), COALESCE(i.cirelay_job_id, m.cirelay_job_id),
       i.received_at, $10::boolean, i.body
FROM input i JOIN numbered n USING (ord)
     LEFT JOIN batch_media m ON m.media_job_id = i.job_id AND i.cirelay_job_id IS NULL
ORDER BY i.event_id, i.ord
ON CONFLICT (event_id) DO NOTHING
RETURNING event_id
"""
_INSERT_REJECTED = (
    "INSERT INTO rejected_callbacks (received_at, source, reason, message, content_type,"
    " body_bytes, body) VALUES ($1, $2, $3, $4, $5, $6, $7)"
)
# Rows of transactions older than every one still running: all of them are visible now, and
# whatever commits later sorts after them. See the module docstring.
_REJECTED_SELECT = (
    "SELECT id, received_at, source, reason, message, content_type, body_bytes, body"
    " FROM rejected_callbacks"
)
_SETTLED = "xid < pg_snapshot_xmin(pg_current_snapshot())"
_EVENT_SELECT = "SELECT xid, seq, batch_id, cirelay_job_id, body FROM events"
# Events per INSERT: bounds one transaction's size and how long it holds its locks.
_MAX_BATCH_ROWS = 64


class PostgresEventLog:
    def __init__(
        self,
        db: Database,
        *,
        outbox: bool,
        rejected_body_max_bytes: int,
        rejected_max_count: int,
        rejected_max_bytes: int,
    ) -> None:
        self._db = db
        self._outbox = outbox
        self._rejected_body_max_bytes = rejected_body_max_bytes
        self._rejected_max_count = rejected_max_count
        self._rejected_max_bytes = rejected_max_bytes
        self._writes: GroupCommit[Write, list[bool]] = GroupCommit(
            self._commit, name="event-store-writer", max_rows=_MAX_BATCH_ROWS, weight=rows_of
        )

    @classmethod
    async def open(
        cls,
        db: Database,
        *,
        outbox: bool,
        rejected_body_max_bytes: int,
        rejected_max_count: int,
        rejected_max_bytes: int = 64 * 1024 * 1024,  # CIRELAY_REJECTED_MAX_BYTES's default
    ) -> PostgresEventLog:
        """Migrate the schema. ``outbox``: mark new events for a publisher."""
        await db.migrate("events", MIGRATIONS)
        return cls(
            db,
            outbox=outbox,
            rejected_body_max_bytes=rejected_body_max_bytes,
            rejected_max_count=rejected_max_count,
            rejected_max_bytes=rejected_max_bytes,
        )

    async def close(self) -> None:
        """Refuse new writes, commit everything already handed over, stop the writer."""
        await self._writes.close()

    # --- writes (group commit) --------------------------------------------------------------

    async def store(self, events: Sequence[Mapping[str, Any]]) -> list[bool]:
        if not events:
            return []
        return await self._writes.submit(EventWrite([_event_row(e) for e in events]))

    async def reject(
        self,
        *,
        received_at: str,
        source: str,
        reason: str,
        message: str,
        content_type: str,
        body: bytes,
        size: int | None = None,
    ) -> None:
        row = (
            received_at,
            _text(source),
            _text(reason),
            _text(message),
            _text(content_type),
            len(body) if size is None else size,
            body[: self._rejected_body_max_bytes],
        )
        await self._writes.submit(RejectWrite(row))

    async def _commit(self, batch: list[Write]) -> list[list[bool] | Exception]:
        """Write a batch; per write, one flag per event: new, or a duplicate of a stored one."""
        event_rows, reject_rows = split(batch)
        new_ids: set[str] = set()
        if event_rows:
            # One statement in autocommit: one round trip, one transaction, one commit.
            columns = [list(column) for column in zip(*event_rows, strict=True)]
            async with self._db.connection() as conn:
                rows = await conn.fetch(_INSERT_EVENTS, *columns, True if self._outbox else None)
            new_ids = {row[0] for row in rows}
        if reject_rows:
            async with self._db.transaction() as conn:
                await conn.executemany(_INSERT_REJECTED, reject_rows)
                await conn.execute(
                    "DELETE FROM rejected_callbacks"
                    " WHERE id <= (SELECT MAX(id) FROM rejected_callbacks) - $1",
                    self._rejected_max_count,
                )
                # The newest bodies whose kept bytes add up to the bound stay.
                await conn.execute(
                    "DELETE FROM rejected_callbacks WHERE id <= (SELECT MAX(id) FROM"
                    " (SELECT id, SUM(octet_length(body)) OVER (ORDER BY id DESC) AS total"
                    "  FROM rejected_callbacks) AS kept WHERE total > $1)",
                    self._rejected_max_bytes,
                )
        return answers(batch, new_ids)

    # --- batch reconciliation ---------------------------------------------------------------
    # An insert attaches an event to a media job recorded before its statement began; the
    # recording attaches events committed before its own statements. An insert running at the
    # very moment a page is recorded can miss both: ``unaccounted`` attaches every such event of
    # the job again before anything is counted, so BatchFinish never goes out without it.

    async def batch_progress(self, cirelay_job_id: str) -> BatchProgress | None:
        async with self._db.connection() as conn:
            row = await conn.fetchrow(
                "SELECT cirelay_job_id, batch_id, page_token, complete, sweep_token"
                " FROM batch_progress WHERE cirelay_job_id = $1",
                cirelay_job_id,
            )
        return None if row is None else BatchProgress(*row)

    async def record_listing(
        self, progress: BatchProgress, media_job_ids: Sequence[str]
    ) -> set[str]:
        job, batch = progress.cirelay_job_id, progress.batch_id
        ids = list(media_job_ids)
        async with self._db.transaction() as conn:
            await conn.execute(
                "INSERT INTO batch_media (media_job_id, cirelay_job_id, batch_id)"
                " SELECT id, $2, $3 FROM unnest($1::text[]) AS id ORDER BY id"
                " ON CONFLICT (media_job_id) DO NOTHING",
                ids,
                job,
                batch,
            )
            await conn.execute(
                "UPDATE events SET batch_id = COALESCE(batch_id, $2),"
                " cirelay_job_id = COALESCE(cirelay_job_id, $3)"
                " WHERE job_id = ANY($1::text[]) AND (batch_id IS NULL OR cirelay_job_id IS NULL)",
                ids,
                batch,
                job,
            )
            rows = await conn.fetch(
                "UPDATE batch_media SET accounted = EXISTS (SELECT 1 FROM events e"
                "  WHERE e.job_id = batch_media.media_job_id"
                "  AND e.event_type = 'TaskFinish' AND e.cirelay_job_id = $2)"
                " WHERE media_job_id = ANY($1::text[]) AND NOT accounted AND cirelay_job_id = $2"
                " RETURNING media_job_id, accounted",
                ids,
                job,
            )
            await conn.execute(
                "INSERT INTO batch_progress"
                " (cirelay_job_id, batch_id, page_token, complete, sweep_token)"
                " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (cirelay_job_id) DO UPDATE SET"
                " batch_id = excluded.batch_id, page_token = excluded.page_token,"
                " complete = excluded.complete, sweep_token = excluded.sweep_token",
                job,
                batch,
                progress.page_token,
                progress.complete,
                progress.sweep_token,
            )
        return {row["media_job_id"] for row in rows if not row["accounted"]}

    async def unaccounted(self, cirelay_job_id: str, batch_id: str) -> Accounting:
        job = cirelay_job_id
        async with self._db.transaction() as conn:
            # The job's own events that came before the submitter recorded its batch id.
            await conn.execute(
                "UPDATE events SET batch_id = $1 WHERE cirelay_job_id = $2 AND batch_id IS NULL",
                batch_id,
                job,
            )
            # Every event of its media jobs still attached to nothing (few: found by index).
            await conn.execute(
                "UPDATE events e SET cirelay_job_id = m.cirelay_job_id,"
                " batch_id = COALESCE(e.batch_id, m.batch_id) FROM batch_media m"
                " WHERE e.cirelay_job_id IS NULL AND m.media_job_id = e.job_id"
                " AND m.cirelay_job_id = $1",
                job,
            )
            # Only media jobs not yet accounted for are looked at: a pass costs what is missing.
            await conn.execute(
                "UPDATE batch_media SET accounted = TRUE"
                " WHERE cirelay_job_id = $1 AND NOT accounted AND EXISTS (SELECT 1 FROM events e"
                "  WHERE e.job_id = batch_media.media_job_id"
                "  AND e.event_type = 'TaskFinish' AND e.cirelay_job_id = $1)",
                job,
            )
            row = await conn.fetchrow(
                "SELECT COUNT(*), COUNT(*) FILTER (WHERE NOT accounted) FROM batch_media"
                " WHERE cirelay_job_id = $1",
                job,
            )
        assert row is not None  # an aggregate always answers one row
        return Accounting(int(row[0]), int(row[1]))

    async def missing_media(self, cirelay_job_id: str, *, after: str, limit: int) -> list[str]:
        async with self._db.connection() as conn:
            rows = await conn.fetch(
                "SELECT media_job_id FROM batch_media WHERE cirelay_job_id = $1 AND NOT accounted"
                " AND media_job_id > $2 ORDER BY media_job_id LIMIT $3",
                cirelay_job_id,
                after,
                limit,
            )
        return [row[0] for row in rows]

    async def reattribute(
        self, cirelay_job_id: str, batch_id: str, media_job_ids: Iterable[str]
    ) -> list[str]:
        """Events of these media jobs (CI lists them under ``batch_id``) that are linked to
        another job or batch, linked to this job and batch instead; the source of each moved."""
        async with self._db.connection() as conn:
            rows = await conn.fetch(
                "UPDATE events SET batch_id = $1, cirelay_job_id = $2"
                " WHERE job_id = ANY($3::text[])"
                # As on SQLite: an unset link is no mismatch (link_job fills those in).
                " AND (batch_id <> $1 OR cirelay_job_id <> $2)"
                " RETURNING source",
                batch_id,
                cirelay_job_id,
                list(media_job_ids),
            )
        return [row[0] for row in rows]

    # --- reads ------------------------------------------------------------------------------

    async def feed(
        self,
        *,
        after: FeedPosition = FEED_START,
        limit: int = 100,
        job_id: str | None = None,
        event_type: str | None = None,
    ) -> list[tuple[FeedPosition, dict[str, Any]]]:
        if unmatchable(job_id, event_type):
            return []
        where = ["(xid, seq) > ($1::xid8, $2::bigint)", _SETTLED]
        params: list[Any] = [after[0], after[1]]
        if job_id is not None:
            params.append(job_id)
            where.append(f"(cirelay_job_id = ${len(params)} OR job_id = ${len(params)})")
        if event_type is not None:
            params.append(event_type)
            where.append(f"event_type = ${len(params)}")
        params.append(limit)
        sql = f"{_EVENT_SELECT} WHERE {' AND '.join(where)} ORDER BY xid, seq LIMIT ${len(params)}"
        async with self._db.connection() as conn:
            rows = await conn.fetch(sql, *params)
        return [((int(row["xid"]), row["seq"]), _event(row)) for row in rows]

    async def for_job(
        self, cirelay_job_id: str, *, limit: int | None = None
    ) -> list[dict[str, Any]]:
        async with self._db.connection() as conn:
            rows = await conn.fetch(
                f"{_EVENT_SELECT} WHERE cirelay_job_id = $1 ORDER BY xid, seq LIMIT $2",
                cirelay_job_id,
                limit,  # NULL: no limit
            )
        return [_event(row) for row in rows]

    async def count_for_job(self, cirelay_job_id: str) -> int:
        async with self._db.connection() as conn:
            count = await conn.fetchval(
                "SELECT COUNT(*) FROM events WHERE cirelay_job_id = $1", cirelay_job_id
            )
        return int(count)

    async def has_events(self, cirelay_job_id: str) -> bool:
        async with self._db.connection() as conn:
            found = await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM events WHERE cirelay_job_id = $1)", cirelay_job_id
            )
        return bool(found)

    async def job_ids_with(self, event_type: str, job_ids: Iterable[str]) -> set[str]:
        """Which of these CI JobIds already have an event of ``event_type``."""
        async with self._db.connection() as conn:
            rows = await conn.fetch(
                "SELECT DISTINCT job_id FROM events"
                " WHERE job_id = ANY($1::text[]) AND event_type = $2",
                list(job_ids),
                event_type,
            )
        return {row[0] for row in rows}

    # --- refused bodies: listing and replay (the /v1/rejected routes) ------------------------

    async def rejected(
        self,
        *,
        after: int = 0,
        limit: int = 100,
        reason: str | None = None,
        source: str | None = None,
    ) -> list[RejectedCallback]:
        """Refused callbacks kept for replay, oldest first, after id ``after``; optionally only
        those of one ``reason`` and one ``source``."""
        if unmatchable(reason, source):
            return []
        async with self._db.connection() as conn:
            rows = await conn.fetch(
                f"{_REJECTED_SELECT} WHERE id > $1"
                " AND ($2::text IS NULL OR reason = $2) AND ($3::text IS NULL OR source = $3)"
                " ORDER BY id LIMIT $4",
                after,
                reason,
                source,
                limit,
            )
        return [RejectedCallback(*row) for row in rows]

    async def get_rejected(self, rejected_id: int) -> RejectedCallback | None:
        async with self._db.connection() as conn:
            row = await conn.fetchrow(f"{_REJECTED_SELECT} WHERE id = $1", rejected_id)
        return RejectedCallback(*row) if row is not None else None

    async def delete_rejected(self, rejected_id: int) -> None:
        """Forget a refused body (its replay was accepted)."""
        async with self._db.connection() as conn:
            await conn.execute("DELETE FROM rejected_callbacks WHERE id = $1", rejected_id)

    async def update_rejected(self, rejected_id: int, reason: str, message: str) -> None:
        """Record why a replayed body was refused again (today's pipeline may say otherwise)."""
        async with self._db.connection() as conn:
            await conn.execute(
                "UPDATE rejected_callbacks SET reason = $1, message = $2 WHERE id = $3",
                _text(reason),
                _text(message),
                rejected_id,
            )

    # --- the outbox (drained by the Pulsar publisher) ---------------------------------------

    async def outbox_pending(self) -> int:
        async with self._db.connection() as conn:
            count = await conn.fetchval("SELECT COUNT(*) FROM events WHERE unpublished")
        return int(count)

    async def outbox_batch(self, limit: int) -> list[tuple[int, dict[str, Any]]]:
        """The oldest unpublished events as (seq, event); ``outbox_done`` takes them off."""
        async with self._db.connection() as conn:
            rows = await conn.fetch(
                f"{_EVENT_SELECT} WHERE unpublished ORDER BY seq LIMIT $1", limit
            )
        return [(row["seq"], _event(row)) for row in rows]

    async def outbox_done(self, seqs: Iterable[int]) -> None:
        async with self._db.connection() as conn:
            await conn.execute(
                "UPDATE events SET unpublished = NULL WHERE seq = ANY($1::bigint[])", list(seqs)
            )


def _event_row(event: Mapping[str, Any]) -> tuple[Any, ...]:
    return (
        event["event_id"],
        event["event_type"],
        event["source"],
        event.get("format"),
        event.get("job_id"),
        event.get("batch_id"),
        event.get("cirelay_job_id"),
        event["received_at"],
        _dumps(event),
    )


def _dumps(event: Mapping[str, Any]) -> str:
    # orjson is several times faster than json on the hot path; it refuses integers beyond 64
    # bits, which a hostile JSON document may carry in ``document``: json writes those.
    try:
        return orjson.dumps(event).decode()
    except orjson.JSONEncodeError:
        return json.dumps(event, ensure_ascii=False, separators=(",", ":"))


def _text(value: str) -> str:
    # PostgreSQL text cannot hold a NUL, and a refused delivery's metadata may carry one (a
    # Pulsar property): marked as U+FFFD instead. The body itself is kept byte for byte.
    return value.replace("\x00", "\ufffd")


def _event(row: asyncpg.Record) -> dict[str, Any]:
    # Links can be learned after the event was stored; the columns are the truth for them.
    event: dict[str, Any] = json.loads(row["body"])  # exact (orjson reads big ints as floats)
    event["batch_id"] = row["batch_id"]
    event["cirelay_job_id"] = row["cirelay_job_id"]
    return event
