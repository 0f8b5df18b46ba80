"""The job queue on the service's SQLite database (WAL), shared safely by several processes.

``BEGIN IMMEDIATE`` (``Database.transaction``) takes the write lock before the claim's sub-select
runs, so two processes can never claim the same row.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from service.queue.protocol import (
    JOB_STATES,
    FinishState,
    JobError,
    JobRecord,
    NewJob,
)
from service.queue.signal import Signal
from service.storage.groupcommit import GroupCommit
from service.storage.rows import Enqueue, EnqueueOutcome, answer_existing, job_record
from service.storage.sqlite.database import Database, Migration, marks

COMPONENT = "queue"

MIGRATIONS = [
    Migration(
        1,
        """
        CREATE TABLE jobs (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            state TEXT NOT NULL,
            bucket TEXT NOT NULL,
            region TEXT NOT NULL,
            tag TEXT NOT NULL,
            job_level INTEGER NOT NULL,
            request TEXT NOT NULL,
            submit_name TEXT NOT NULL,
            caller_callback TEXT NOT NULL,
            via TEXT NOT NULL,
            idempotency_key TEXT UNIQUE,
            fingerprint TEXT,
            ci_job_id TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            last_error_code TEXT,
            last_error_message TEXT,
            in_doubt INTEGER NOT NULL DEFAULT 0,
            lookup_after REAL,
            created_at REAL NOT NULL,
            available_at REAL NOT NULL,
            submitted_at REAL,
            finished_at REAL,
            lease_owner TEXT
        );
        -- The claim walks this index in priority order and stops at the first row whose
        -- available_at has come. Holding available_at, the index answers without the table.
        CREATE INDEX jobs_claim ON jobs (state, job_level DESC, seq, available_at);
        CREATE INDEX jobs_available ON jobs (state, available_at);
        CREATE INDEX jobs_state_seq ON jobs (state, seq);
        """,
    ),
    # Retention finds the jobs that ended longest ago without reading the others.
    Migration(2, "CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL"),
]

_COLUMNS = (
    "seq, id, state, bucket, region, tag, job_level, request, submit_name, caller_callback, via,"
    " idempotency_key, fingerprint, ci_job_id, attempts, last_error_code, last_error_message,"
    " in_doubt, lookup_after, created_at, available_at, submitted_at, finished_at,"
    " lease_owner"
)


_INSERT = (
    "INSERT INTO jobs (id, state, bucket, region, tag, job_level, request, submit_name,"
    " caller_callback, via, idempotency_key, fingerprint, created_at, available_at) VALUES"
)
_ROW_MARKS = "(?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
# Jobs written per enqueue transaction, at most.
_MAX_BATCH = 256


class SQLiteJobQueue:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._changed = Signal()
        # Concurrent enqueues share one transaction: one commit per request would cap intake
        # at the commit rate.
        self._intake = GroupCommit(self._insert, name="queue-enqueue", max_rows=_MAX_BATCH)

    @classmethod
    async def open(cls, db: Database) -> SQLiteJobQueue:
        await db.migrate(COMPONENT, MIGRATIONS)
        return cls(db)

    async def close(self) -> None:
        await self._intake.close()

    # --- intake and reads -------------------------------------------------------------------
    async def enqueue(self, job: NewJob, *, now: float) -> tuple[JobRecord, bool]:
        # An IdempotencyConflict comes back as this caller's result and is raised here.
        record, created = await self._intake.submit(Enqueue(job, now))
        if created:
            self._changed.notify()
        return record, created

    async def _insert(self, batch: list[Enqueue]) -> list[EnqueueOutcome]:
        """One transaction for a batch of enqueues: each job's outcome, a conflict as a value."""
        keys = sorted({k for k in (item.job.idempotency_key for item in batch) if k is not None})
        async with self._db.transaction() as conn:
            known: dict[str, JobRecord] = {}
            if keys:
                rows = await conn.execute_fetchall(
                    f"SELECT {_COLUMNS} FROM jobs WHERE idempotency_key IN ({marks(keys)})",
                    keys,
                )
                known = {str(r["idempotency_key"]): job_record(r) for r in rows}
            # Per job: the id of the row that answers it, and whether this batch inserts it.
            answers: list[tuple[str, bool]] = []
            first_in_batch: dict[str, str] = {}
            inserts: list[tuple[Any, ...]] = []
            for item in batch:
                key = item.job.idempotency_key
                if key is not None and key in known:
                    answers.append((known[key].id, False))
                elif key is not None and key in first_in_batch:
                    answers.append((first_in_batch[key], False))
                else:
                    inserts.append(_insert_row(item.job, item.now))
                    answers.append((item.job.id, True))
                    if key is not None:
                        first_in_batch[key] = item.job.id
            if inserts:
                # One multi-row INSERT … RETURNING: a single round trip to the database thread.
                values = ", ".join(_ROW_MARKS for _ in inserts)
                rows = await conn.execute_fetchall(
                    f"{_INSERT} {values} RETURNING {_COLUMNS}",
                    [value for row in inserts for value in row],
                )
                known.update({str(r["id"]): job_record(r) for r in rows})
        by_id = {record.id: record for record in known.values()}
        outcomes: list[EnqueueOutcome] = []
        for item, (job_id, inserted) in zip(batch, answers, strict=True):
            record = by_id[job_id]
            if inserted and job_id == item.job.id:
                outcomes.append((record, True))
            else:
                outcomes.append(answer_existing(record, item.job))
        return outcomes

    async def get(self, job_id: str) -> JobRecord | None:
        async with self._db.exclusive() as conn:
            cur = await conn.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
            row = await cur.fetchone()
        return job_record(row) if row is not None else None

    async def list_jobs(
        self, *, states: Sequence[str] = (), limit: int = 50, before_seq: int | None = None
    ) -> list[JobRecord]:
        clauses: list[str] = []
        params: list[Any] = []
        if states:
            clauses.append(f"state IN ({', '.join('?' for _ in states)})")
            params.extend(states)
        if before_seq is not None:
            clauses.append("seq < ?")
            params.append(before_seq)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        async with self._db.exclusive() as conn:
            cur = await conn.execute(
                f"SELECT {_COLUMNS} FROM jobs {where} ORDER BY seq DESC LIMIT ?",
                (*params, limit),
            )
            rows = await cur.fetchall()
        return [job_record(r) for r in rows]

    # --- the submitter's side ---------------------------------------------------------------
    async def claim(self, owner: str, *, lease_seconds: float, now: float) -> JobRecord | None:
        async with self._db.transaction() as conn:
            cur = await conn.execute(
                "UPDATE jobs SET lease_owner = ?, available_at = ?"
                " WHERE seq = (SELECT seq FROM jobs WHERE state = 'queued' AND available_at <= ?"
                "              ORDER BY job_level DESC, seq LIMIT 1)"
                f" RETURNING {_COLUMNS}",
                (owner, now + lease_seconds, now),
            )
            row = await cur.fetchone()
        return job_record(row) if row is not None else None

    async def heartbeat(self, job_id: str, owner: str, *, lease_seconds: float, now: float) -> bool:
        return await self._update(
            "UPDATE jobs SET available_at = ?"
            " WHERE id = ? AND lease_owner = ? AND state = 'queued'",
            (now + lease_seconds, job_id, owner),
        )

    async def begin_attempt(
        self, job_id: str, owner: str, *, now: float, lookup_after: float
    ) -> bool:
        return await self._update(
            "UPDATE jobs SET attempts = attempts + 1, in_doubt = 1, lookup_after = ?"
            " WHERE id = ? AND lease_owner = ? AND state = 'queued'",
            (lookup_after, job_id, owner),
        )

    async def record_submitted(
        self, job_id: str, owner: str, ci_job_id: str, *, now: float
    ) -> bool:
        return await self._update(
            "UPDATE jobs SET state = 'submitted', ci_job_id = ?, submitted_at = ?, in_doubt = 0,"
            " lease_owner = NULL, last_error_code = NULL, last_error_message = NULL"
            " WHERE id = ? AND lease_owner = ? AND state = 'queued'",
            (ci_job_id, now, job_id, owner),
        )

    async def attach_ci_job(self, job_id: str, ci_job_id: str) -> bool:
        return await self._update(
            "UPDATE jobs SET ci_job_id = ?, in_doubt = 0 WHERE id = ? AND ci_job_id IS NULL",
            (ci_job_id, job_id),
        )

    async def retry_later(
        self,
        job_id: str,
        owner: str,
        *,
        error: JobError | None,
        available_at: float,
        in_doubt: bool,
        lookup_after: float | None = None,
        count_attempt: bool = False,
    ) -> bool:
        changed = await self._update(
            "UPDATE jobs SET available_at = ?, lease_owner = NULL, in_doubt = ?,"
            " lookup_after = COALESCE(?, lookup_after), attempts = attempts + ?,"
            " last_error_code = COALESCE(?, last_error_code),"
            " last_error_message = COALESCE(?, last_error_message)"
            " WHERE id = ? AND lease_owner = ? AND state = 'queued'",
            (
                available_at,
                int(in_doubt),
                lookup_after,
                int(count_attempt),
                error.code if error else None,
                error.message if error else None,
                job_id,
                owner,
            ),
        )
        self._changed.notify()
        return changed

    async def bury(
        self, job_id: str, owner: str, *, error: JobError, now: float, count_attempt: bool = False
    ) -> bool:
        changed = await self._update(
            "UPDATE jobs SET state = 'dead', finished_at = ?, lease_owner = NULL,"
            " last_error_code = ?, last_error_message = ?, attempts = attempts + ?"
            " WHERE id = ? AND lease_owner = ? AND state = 'queued'",
            (now, error.code, error.message, int(count_attempt), job_id, owner),
        )
        self._changed.notify()
        return changed

    async def release(self, job_id: str, owner: str, *, now: float) -> bool:
        changed = await self._update(
            "UPDATE jobs SET available_at = ?, lease_owner = NULL"
            " WHERE id = ? AND lease_owner = ? AND state = 'queued'",
            (now, job_id, owner),
        )
        self._changed.notify()
        return changed

    # --- operator actions -------------------------------------------------------------------
    async def cancel_queued(self, job_id: str, *, now: float) -> JobRecord | None:
        async with self._db.transaction() as conn:
            cur = await conn.execute(
                f"SELECT {_COLUMNS} FROM jobs WHERE id = ? AND state = 'queued'", (job_id,)
            )
            row = await cur.fetchone()
            if row is None:
                return None
            await conn.execute(
                "UPDATE jobs SET state = 'cancelled', finished_at = ?, lease_owner = NULL"
                " WHERE id = ?",
                (now, job_id),
            )
        self._changed.notify()
        return job_record(row)

    async def requeue_dead(self, job_id: str, *, now: float) -> JobRecord | None:
        async with self._db.transaction() as conn:
            cur = await conn.execute(
                "UPDATE jobs SET state = 'queued', attempts = 0, available_at = ?,"
                " finished_at = NULL, lease_owner = NULL"
                f" WHERE id = ? AND state = 'dead' RETURNING {_COLUMNS}",
                (now, job_id),
            )
            row = await cur.fetchone()
        if row is None:
            return None
        self._changed.notify()
        return job_record(row)

    # --- the events side --------------------------------------------------------------------
    async def mark_running(self, job_id: str) -> bool:
        return await self._update(
            "UPDATE jobs SET state = 'running' WHERE id = ? AND state = 'submitted'", (job_id,)
        )

    async def finish(self, job_id: str, state: FinishState, *, at: float) -> bool:
        return await self._update(
            "UPDATE jobs SET state = ?, finished_at = ?, lease_owner = NULL"
            " WHERE id = ? AND state NOT IN ('succeeded', 'failed', 'cancelled', 'dead')",
            (state, at, job_id),
        )

    async def unfinished_batches(self, limit: int) -> list[JobRecord]:
        async with self._db.exclusive() as conn:
            cur = await conn.execute(
                f"SELECT {_COLUMNS} FROM jobs WHERE state IN ('submitted', 'running')"
                " AND ci_job_id IS NOT NULL ORDER BY seq LIMIT ?",
                (limit,),
            )
            rows = await cur.fetchall()
        return [job_record(r) for r in rows]

    # --- observation ------------------------------------------------------------------------
    async def depth_by_state(self) -> dict[str, int]:
        async with self._db.exclusive() as conn:
            cur = await conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state")
            rows = await cur.fetchall()
        depth: dict[str, int] = dict.fromkeys(JOB_STATES, 0)
        depth.update({str(r[0]): int(r[1]) for r in rows})
        return depth

    async def oldest_queued_age(self, now: float) -> float:
        async with self._db.exclusive() as conn:
            # seq follows insertion, so the lowest queued seq is the oldest queued job.
            cur = await conn.execute(
                "SELECT created_at FROM jobs WHERE state = 'queued' ORDER BY seq LIMIT 1"
            )
            row = await cur.fetchone()
        oldest = row[0] if row is not None else None
        return max(0.0, now - float(oldest)) if oldest is not None else 0.0

    async def next_available_at(self) -> float | None:
        async with self._db.exclusive() as conn:
            cur = await conn.execute("SELECT MIN(available_at) FROM jobs WHERE state = 'queued'")
            row = await cur.fetchone()
        return float(row[0]) if row is not None and row[0] is not None else None

    async def wait_changed(self, max_wait: float) -> None:
        await self._changed.wait(max_wait)

    # --- helpers ----------------------------------------------------------------------------
    async def _update(self, sql: str, params: Sequence[Any]) -> bool:
        async with self._db.transaction() as conn:
            cur = await conn.execute(sql, params)
            return cur.rowcount > 0


def _insert_row(job: NewJob, now: float) -> tuple[Any, ...]:
    return (
        job.id,
        job.bucket,
        job.region,
        job.tag,
        job.job_level,
        json.dumps(job.request, separators=(",", ":")),
        job.submit_name,
        job.caller_callback,
        job.via,
        job.idempotency_key,
        job.fingerprint,
        now,
        now,
    )
