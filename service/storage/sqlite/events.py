"""The event log on SQLite: events stored once by ``event_id`` (group commit), the feed, the outbox.

Sequence numbers (``seq``) are assigned inside the single writer transaction of the database, so a
reader never sees seq N+1 committed while N is still in flight: the feed's cursor is stable.

The outbox is a flag on the event row (``unpublished = 1``, found through a partial index), set by
the statement that inserts the event: an event is never stored without its outbox entry, and no
second table is written on the hot path. It is cleared once the broker acknowledged the event.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import aiosqlite
import orjson

from service.storage.eventwrites import EventWrite, RejectWrite, Write, answers, rows_of, split
from service.storage.groupcommit import GroupCommit
from service.storage.protocol import (
    FEED_START,
    Accounting,
    BatchProgress,
    FeedPosition,
    RejectedCallback,
)
from service.storage.sqlite.database import Database, Migration, marks

MIGRATIONS = (
    Migration(
        1,
        """
        CREATE TABLE events (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            event_id TEXT NOT NULL UNIQUE,
            event_type TEXT NOT NULL,
            source TEXT NOT NULL,
            format TEXT,
            job_id TEXT,
            batch_id TEXT,
            cirelay_job_id TEXT,
            received_at TEXT NOT NULL,
            unpublished INTEGER,
            body TEXT NOT NULL
        );
        CREATE INDEX events_by_cirelay_job ON events (cirelay_job_id, seq);
        CREATE INDEX events_by_job ON events (job_id, seq);
        CREATE INDEX events_outbox ON events (seq) WHERE unpublished = 1;
        CREATE TABLE rejected_callbacks (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            received_at TEXT NOT NULL,
            source TEXT NOT NULL,
            reason TEXT NOT NULL,
            message TEXT NOT NULL,
            content_type TEXT NOT NULL,
            body_bytes INTEGER NOT NULL,
            body BLOB NOT NULL
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
            accounted INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX batch_media_open ON batch_media (cirelay_job_id, accounted, media_job_id);
        CREATE TABLE batch_progress (
            cirelay_job_id TEXT PRIMARY KEY,
            batch_id TEXT NOT NULL,
            page_token TEXT NOT NULL,
            complete INTEGER NOT NULL,
            sweep_token TEXT
        )
        """,
    ),
)

_EVENT_COLUMNS = (
    "event_id, event_type, source, format, job_id, batch_id, cirelay_job_id, received_at,"
    " unpublished, body"
)
# An event without its links takes them from the media job the reconciler recorded, in the
# statement that inserts it (SQLite evaluates COALESCE lazily: no lookup when the link is known).
_EVENT_MARKS = (
    "(?, ?, ?, ?, ?,"
    " COALESCE(?, (SELECT batch_id FROM batch_media WHERE media_job_id = ?)),"
    " COALESCE(?, (SELECT cirelay_job_id FROM batch_media WHERE media_job_id = ?)),"
    " ?, ?, ?)"
)
_INSERT_REJECTED = (
    "INSERT INTO rejected_callbacks (received_at, source, reason, message, content_type,"
    " body_bytes, body) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
# SQLite's default limit on host parameters is far above this; chunks keep statements small.
_IN_CHUNK = 500
# Media jobs checked for their TaskFinish per transaction by ``unaccounted``.
_ACCOUNT_SLICE = 2000
# Events per INSERT: one statement per transaction, and few distinct statement texts to cache.
_MAX_BATCH_ROWS = 64


class SQLiteEventLog:
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
    ) -> SQLiteEventLog:
        """Migrate the schema. ``outbox``: keep outbox rows for a publisher."""
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
        unpublished = 1 if self._outbox else None
        return await self._writes.submit(EventWrite([_event_row(e, unpublished) for e in events]))

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
            source,
            reason,
            message,
            content_type,
            len(body) if size is None else size,
            body[: self._rejected_body_max_bytes],
        )
        await self._writes.submit(RejectWrite(row))

    async def _commit(self, batch: list[Write]) -> list[list[bool] | Exception]:
        """Write a batch; per write, one flag per event: new, or a duplicate of a stored one."""
        event_rows, reject_rows = split(batch)
        new_ids: set[str] = set()
        if event_rows:
            # One statement, so one trip to the database thread per batch: in autocommit mode it
            # is its own transaction, committed when it returns. The lock keeps it out of other
            # tasks' transactions on the shared connection. RETURNING names the rows inserted:
            # duplicates of stored events (or of an earlier row in the batch) are skipped.
            async with self._db.exclusive() as conn:
                rows = await conn.execute_fetchall(
                    _insert_events_sql(len(event_rows)),
                    [value for row in event_rows for value in row],
                )
            new_ids = {row[0] for row in rows}
        if reject_rows:
            async with self._db.transaction() as conn:
                await conn.executemany(_INSERT_REJECTED, reject_rows)
                await conn.execute(
                    "DELETE FROM rejected_callbacks"
                    " WHERE id <= (SELECT MAX(id) FROM rejected_callbacks) - ?",
                    (self._rejected_max_count,),
                )
                # The newest bodies whose kept bytes add up to the bound stay.
                await conn.execute(
                    "DELETE FROM rejected_callbacks WHERE id <= (SELECT MAX(id) FROM"
                    " (SELECT id, SUM(LENGTH(body)) OVER (ORDER BY id DESC) AS total"
                    "  FROM rejected_callbacks) WHERE total > ?)",
                    (self._rejected_max_bytes,),
                )
        return answers(batch, new_ids)

    # --- batch reconciliation ---------------------------------------------------------------

    async def batch_progress(self, cirelay_job_id: str) -> BatchProgress | None:
        async with self._db.exclusive() as conn:
            rows = list(
                await conn.execute_fetchall(
                    "SELECT cirelay_job_id, batch_id, page_token, complete, sweep_token"
                    " FROM batch_progress WHERE cirelay_job_id = ?",
                    (cirelay_job_id,),
                )
            )
        if not rows:
            return None
        row = rows[0]
        return BatchProgress(row[0], row[1], row[2], bool(row[3]), row[4])

    async def record_listing(
        self, progress: BatchProgress, media_job_ids: Sequence[str]
    ) -> set[str]:
        job, batch = progress.cirelay_job_id, progress.batch_id
        ids = list(media_job_ids)
        missing: set[str] = set()
        # One transaction: the write lock orders it against every event insert, so an event is
        # either stored before (and attached here) or after (and attached by its insert).
        async with self._db.transaction() as conn:
            for chunk in _chunks(ids):
                await conn.executemany(
                    "INSERT INTO batch_media (media_job_id, cirelay_job_id, batch_id)"
                    " VALUES (?, ?, ?) ON CONFLICT (media_job_id) DO NOTHING",
                    [(media_id, job, batch) for media_id in chunk],
                )
                await conn.execute(
                    "UPDATE events SET batch_id = COALESCE(batch_id, ?),"
                    " cirelay_job_id = COALESCE(cirelay_job_id, ?)"
                    f" WHERE job_id IN ({marks(chunk)})"
                    " AND (batch_id IS NULL OR cirelay_job_id IS NULL)",
                    (batch, job, *chunk),
                )
                await conn.execute(
                    "UPDATE batch_media SET accounted = 1"
                    f" WHERE media_job_id IN ({marks(chunk)}) AND accounted = 0"
                    " AND cirelay_job_id = ? AND EXISTS (SELECT 1 FROM events e"
                    "  WHERE e.job_id = batch_media.media_job_id"
                    "  AND e.event_type = 'TaskFinish' AND e.cirelay_job_id = ?)",
                    (*chunk, job, job),
                )
                rows = await conn.execute_fetchall(
                    "SELECT media_job_id FROM batch_media"
                    f" WHERE media_job_id IN ({marks(chunk)}) AND accounted = 0"
                    " AND cirelay_job_id = ?",
                    (*chunk, job),
                )
                missing.update(row[0] for row in rows)
            await conn.execute(
                "INSERT INTO batch_progress"
                " (cirelay_job_id, batch_id, page_token, complete, sweep_token)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (cirelay_job_id) DO UPDATE SET"
                " batch_id = excluded.batch_id, page_token = excluded.page_token,"
                " complete = excluded.complete,"
                " sweep_token = excluded.sweep_token",
                (
                    job,
                    batch,
                    progress.page_token,
                    int(progress.complete),
                    progress.sweep_token,
                ),
            )
        return missing

    async def unaccounted(self, cirelay_job_id: str, batch_id: str) -> Accounting:
        job = cirelay_job_id
        async with self._db.transaction() as conn:
            # The job's own events that came before the submitter recorded its batch id.
            await conn.execute(
                "UPDATE events SET batch_id = ? WHERE cirelay_job_id = ? AND batch_id IS NULL",
                (batch_id, job),
            )
            # Every event of its media jobs still attached to nothing (few: found by index).
            await conn.execute(
                "UPDATE events SET cirelay_job_id = m.cirelay_job_id,"
                " batch_id = COALESCE(events.batch_id, m.batch_id) FROM batch_media AS m"
                " WHERE events.cirelay_job_id IS NULL AND m.media_job_id = events.job_id"
                " AND m.cirelay_job_id = ?",
                (job,),
            )
        # Only media jobs not yet accounted for are looked at, a short transaction per slice:
        # the first check of a large batch must not hold the one write lock for long.
        after = ""
        while True:
            async with self._db.transaction() as conn:
                rows = await conn.execute_fetchall(
                    "SELECT media_job_id FROM batch_media WHERE cirelay_job_id = ?"
                    " AND accounted = 0 AND media_job_id > ? ORDER BY media_job_id LIMIT ?",
                    (job, after, _ACCOUNT_SLICE),
                )
                ids = [row[0] for row in rows]
                if not ids:
                    break
                await conn.execute(
                    "UPDATE batch_media SET accounted = 1 WHERE cirelay_job_id = ?"
                    " AND accounted = 0 AND media_job_id > ? AND media_job_id <= ?"
                    " AND EXISTS (SELECT 1 FROM events e WHERE e.job_id = batch_media.media_job_id"
                    "  AND e.event_type = 'TaskFinish' AND e.cirelay_job_id = ?)",
                    (job, after, ids[-1], job),
                )
            after = ids[-1]
        async with self._db.exclusive() as conn:
            rows = await conn.execute_fetchall(
                "SELECT COUNT(*), COALESCE(SUM(1 - accounted), 0) FROM batch_media"
                " WHERE cirelay_job_id = ?",
                (job,),
            )
            recorded, missing = (int(value) for value in next(iter(rows)))
        return Accounting(recorded, missing)

    async def missing_media(self, cirelay_job_id: str, *, after: str, limit: int) -> list[str]:
        async with self._db.exclusive() as conn:
            rows = await conn.execute_fetchall(
                "SELECT media_job_id FROM batch_media WHERE cirelay_job_id = ? AND accounted = 0"
                " AND media_job_id > ? ORDER BY media_job_id LIMIT ?",
                (cirelay_job_id, after, limit),
            )
        return [row[0] for row in rows]

    async def reattribute(
        self, cirelay_job_id: str, batch_id: str, media_job_ids: Iterable[str]
    ) -> list[str]:
        """Events of these media jobs (CI lists them under ``batch_id``) that are linked to
        another job or batch, linked to this job and batch instead; the source of each moved."""
        moved: list[str] = []
        async with self._db.transaction() as conn:
            for chunk in _chunks(list(media_job_ids)):
                rows = await conn.execute_fetchall(
                    "UPDATE events SET batch_id = ?, cirelay_job_id = ?"
                    f" WHERE job_id IN ({marks(chunk)})"
                    " AND (batch_id != ? OR cirelay_job_id != ?) RETURNING source",
                    (batch_id, cirelay_job_id, *chunk, batch_id, cirelay_job_id),
                )
                moved.extend(row[0] for row in rows)
        return moved

    # --- reads ------------------------------------------------------------------------------

    async def feed(
        self,
        *,
        after: FeedPosition = FEED_START,
        limit: int = 100,
        job_id: str | None = None,
        event_type: str | None = None,
    ) -> list[tuple[FeedPosition, dict[str, Any]]]:
        # One writer at a time (the database's lock) assigns seq inside its transaction, so a
        # reader never sees seq N+1 committed while N is still in flight: seq alone is gap-free.
        where = ["seq > ?"]
        params: list[Any] = [after[1]]
        if job_id is not None:
            where.append("(cirelay_job_id = ? OR job_id = ?)")
            params += [job_id, job_id]
        if event_type is not None:
            where.append("event_type = ?")
            params.append(event_type)
        sql = (
            "SELECT seq, batch_id, cirelay_job_id, body FROM events"
            f" WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?"
        )
        async with self._db.exclusive() as conn:
            rows = await conn.execute_fetchall(sql, (*params, limit))
        return [((0, row["seq"]), _event(row)) for row in rows]

    async def for_job(
        self, cirelay_job_id: str, *, limit: int | None = None
    ) -> list[dict[str, Any]]:
        async with self._db.exclusive() as conn:
            rows = await conn.execute_fetchall(
                "SELECT batch_id, cirelay_job_id, body FROM events"
                " WHERE cirelay_job_id = ? ORDER BY seq LIMIT ?",
                (cirelay_job_id, -1 if limit is None else limit),
            )
        return [_event(row) for row in rows]

    async def count_for_job(self, cirelay_job_id: str) -> int:
        async with self._db.exclusive() as conn:
            rows = await conn.execute_fetchall(
                "SELECT COUNT(*) FROM events WHERE cirelay_job_id = ?", (cirelay_job_id,)
            )
        return int(next(iter(rows))[0])

    async def has_events(self, cirelay_job_id: str) -> bool:
        async with self._db.exclusive() as conn:
            rows = await conn.execute_fetchall(
                "SELECT 1 FROM events WHERE cirelay_job_id = ? LIMIT 1", (cirelay_job_id,)
            )
        return bool(list(rows))

    async def job_ids_with(self, event_type: str, job_ids: Iterable[str]) -> set[str]:
        found: set[str] = set()
        async with self._db.exclusive() as conn:
            for chunk in _chunks(list(job_ids)):
                rows = await conn.execute_fetchall(
                    f"SELECT DISTINCT job_id FROM events WHERE job_id IN ({marks(chunk)})"
                    " AND event_type = ?",
                    (*chunk, event_type),
                )
                found.update(row[0] for row in rows)
        return found

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
        where: list[str] = ["id > ?"]
        params: list[Any] = [after]
        for column, value in (("reason", reason), ("source", source)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        async with self._db.exclusive() as conn:
            rows = await conn.execute_fetchall(
                "SELECT id, received_at, source, reason, message, content_type, body_bytes, body"
                f" FROM rejected_callbacks WHERE {' AND '.join(where)} ORDER BY id LIMIT ?",
                (*params, limit),
            )
        return [RejectedCallback(*row) for row in rows]

    async def get_rejected(self, rejected_id: int) -> RejectedCallback | None:
        async with self._db.exclusive() as conn:
            rows = await conn.execute_fetchall(
                "SELECT id, received_at, source, reason, message, content_type, body_bytes, body"
                " FROM rejected_callbacks WHERE id = ?",
                (rejected_id,),
            )
        return next((RejectedCallback(*row) for row in rows), None)

    async def delete_rejected(self, rejected_id: int) -> None:
        """Forget a refused body (its replay was accepted)."""
        async with self._db.transaction() as conn:
            await conn.execute("DELETE FROM rejected_callbacks WHERE id = ?", (rejected_id,))

    async def update_rejected(self, rejected_id: int, reason: str, message: str) -> None:
        """Record why a replayed body was refused again (today's pipeline may say otherwise)."""
        async with self._db.transaction() as conn:
            await conn.execute(
                "UPDATE rejected_callbacks SET reason = ?, message = ? WHERE id = ?",
                (reason, message, rejected_id),
            )

    # --- the outbox (drained by the Pulsar publisher) ---------------------------------------

    async def outbox_pending(self) -> int:
        async with self._db.exclusive() as conn:
            rows = await conn.execute_fetchall("SELECT COUNT(*) FROM events WHERE unpublished = 1")
        return int(next(iter(rows))[0])

    async def outbox_batch(self, limit: int) -> list[tuple[int, dict[str, Any]]]:
        """The oldest unpublished events as (seq, event); ``outbox_done`` takes them off."""
        async with self._db.exclusive() as conn:
            rows = await conn.execute_fetchall(
                "SELECT seq, batch_id, cirelay_job_id, body FROM events"
                " WHERE unpublished = 1 ORDER BY seq LIMIT ?",
                (limit,),
            )
        return [(row["seq"], _event(row)) for row in rows]

    async def outbox_done(self, seqs: Iterable[int]) -> None:
        async with self._db.transaction() as conn:
            for chunk in _chunks(list(seqs)):
                await conn.execute(
                    f"UPDATE events SET unpublished = NULL WHERE seq IN ({marks(chunk)})", chunk
                )


def _event_row(event: Mapping[str, Any], unpublished: int | None) -> tuple[Any, ...]:
    return (
        event["event_id"],
        event["event_type"],
        event["source"],
        event.get("format"),
        event.get("job_id"),
        event.get("batch_id"),
        event.get("job_id"),
        event.get("cirelay_job_id"),
        event.get("job_id"),
        event["received_at"],
        unpublished,
        _dumps(event),
    )


def _dumps(event: Mapping[str, Any]) -> str:
    # orjson is several times faster than json on the hot path; it refuses integers beyond 64
    # bits, which a hostile JSON document may carry in ``document``: json writes those.
    try:
        return orjson.dumps(event).decode()
    except orjson.JSONEncodeError:
        return json.dumps(event, ensure_ascii=False, separators=(",", ":"))


@functools.lru_cache(maxsize=_MAX_BATCH_ROWS)
def _insert_events_sql(rows: int) -> str:
    return (
        f"INSERT INTO events ({_EVENT_COLUMNS}) VALUES {', '.join([_EVENT_MARKS] * rows)}"
        " ON CONFLICT (event_id) DO NOTHING RETURNING event_id"
    )


def _event(row: aiosqlite.Row) -> dict[str, Any]:
    # Links can be learned after the event was stored; the columns are the truth for them.
    event: dict[str, Any] = json.loads(row["body"])  # exact (orjson reads big ints as floats)
    event["batch_id"] = row["batch_id"]
    event["cirelay_job_id"] = row["cirelay_job_id"]
    return event


def _chunks(items: list[Any]) -> Iterable[list[Any]]:
    for start in range(0, len(items), _IN_CHUNK):
        yield items[start : start + _IN_CHUNK]
