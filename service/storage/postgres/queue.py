"""The job queue on PostgreSQL, shared by every replica.

The claim locks its row with ``FOR UPDATE SKIP LOCKED``: replicas claiming at the same moment each
take a different job and never wait for one another's claim transactions. Idempotency keys are a
unique column written with ``ON CONFLICT (idempotency_key) DO NOTHING``: when two replicas insert
the same key at once, PostgreSQL makes the second insert wait for the first transaction, then skip
the row, and the loser reads the winner's job.

Idle workers wake on other replicas' enqueues too: every insert (a trigger) and every job given
back sends ``NOTIFY cirelay_queue`` with its transaction, and each queue keeps one pooled connection
``LISTEN``ing. While that connection is lost, or with a pool of one connection, workers
still find the work by polling (``CIRELAY_POLL_INTERVAL_SECONDS``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Sequence
from typing import Any, cast

import structlog

from service.queue.protocol import (
    JOB_STATES,
    FinishState,
    JobError,
    JobRecord,
    NewJob,
)
from service.queue.signal import Signal
from service.storage.errors import StorageUnavailable
from service.storage.groupcommit import GroupCommit
from service.storage.postgres.database import Database, Migration, unmatchable
from service.storage.rows import Enqueue, EnqueueOutcome, answer_existing, job_record

log = structlog.get_logger(__name__)

COMPONENT = "queue"

MIGRATIONS = (
    Migration(
        1,
        """
        CREATE TABLE jobs (
            seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            state TEXT NOT NULL,
            bucket TEXT NOT NULL,
            region TEXT NOT NULL,
            tag TEXT NOT NULL,
            job_level INTEGER NOT NULL,
            -- JSON, not JSONB: the text is kept as accepted, key order included, because the
            -- submission XML is built from it in that order.
            request JSON NOT NULL,
            submit_name TEXT NOT NULL,
            caller_callback TEXT NOT NULL,
            via TEXT NOT NULL,
            idempotency_key TEXT UNIQUE,
            fingerprint TEXT,
            ci_job_id TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            last_error_code TEXT,
            last_error_message TEXT,
            in_doubt BOOLEAN NOT NULL DEFAULT FALSE,
            lookup_after DOUBLE PRECISION,
            created_at DOUBLE PRECISION NOT NULL,
            available_at DOUBLE PRECISION NOT NULL,
            submitted_at DOUBLE PRECISION,
            finished_at DOUBLE PRECISION,
            lease_owner TEXT
        );
        -- The claim walks this index in priority order and stops at the first row whose
        -- available_at has come; available_at is a key column so that test runs inside the index,
        -- before any heap visit. Partial: it holds only queued jobs, however many have finished.
        CREATE INDEX jobs_claim ON jobs (job_level DESC, seq, available_at)
            WHERE state = 'queued';
        CREATE INDEX jobs_queued_available ON jobs (available_at) WHERE state = 'queued';
        CREATE INDEX jobs_state_seq ON jobs (state, seq);
        -- Wakes the queues LISTENing on every replica: one notification per INSERT statement
        -- (a whole group-committed batch), sent when its transaction commits.
        CREATE FUNCTION jobs_notify() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('cirelay_queue', '');
            RETURN NULL;
        END
        $$;
        CREATE TRIGGER jobs_inserted AFTER INSERT ON jobs
            FOR EACH STATEMENT EXECUTE FUNCTION jobs_notify();
        """,
    ),
    # Retention finds the jobs that ended longest ago without reading the others.
    Migration(2, "CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL"),
)

_COLUMNS = (
    "seq, id, state, bucket, region, tag, job_level, request, submit_name, caller_callback, via,"
    " idempotency_key, fingerprint, ci_job_id, attempts, last_error_code, last_error_message,"
    " in_doubt, lookup_after, created_at, available_at, submitted_at, finished_at,"
    " lease_owner"
)

# One statement for a whole batch: one array per column, unnested into rows in array order. A key
# another transaction already holds is skipped, not an error.
_INSERT = (
    "INSERT INTO jobs (id, state, bucket, region, tag, job_level, request, submit_name,"
    " caller_callback, via, idempotency_key, fingerprint, created_at, available_at)"
    " SELECT id, 'queued', bucket, region, tag, job_level, request::json, submit_name,"
    " caller_callback, via, idempotency_key, fingerprint, created_at, created_at"
    " FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int[], $6::text[],"
    " $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::float8[])"
    " AS t(id, bucket, region, tag, job_level, request, submit_name, caller_callback, via,"
    " idempotency_key, fingerprint, created_at)"
    f" ON CONFLICT (idempotency_key) DO NOTHING RETURNING {_COLUMNS}"
)

# The best available job, locked; rows another replica's claim holds are skipped, not waited for.
# Public for the test that checks its plan.
CLAIM = (
    "WITH next AS ("
    " SELECT seq FROM jobs WHERE state = 'queued' AND available_at <= $3"
    " ORDER BY job_level DESC, seq LIMIT 1 FOR UPDATE SKIP LOCKED)"
    " UPDATE jobs SET lease_owner = $1, available_at = $2 FROM next WHERE jobs.seq = next.seq"
    f" RETURNING {', '.join('jobs.' + c.strip() for c in _COLUMNS.split(','))}"
)

# Jobs written per enqueue transaction, at most.
_MAX_BATCH = 256
# Sent when claimable work appears, so idle workers on every replica look at once.
_CHANNEL = "cirelay_queue"
_NOTIFY = f"NOTIFY {_CHANNEL}"
# After losing the listening connection (the database restarting), wait this long to listen again.
_RELISTEN_SECONDS = 1.0


class PostgresJobQueue:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._changed = Signal()
        # Concurrent enqueues share one transaction: one commit per request would cap intake
        # at the commit rate.
        self._intake = GroupCommit(self._insert, name="queue-enqueue", max_rows=_MAX_BATCH)
        self._listener: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, db: Database) -> PostgresJobQueue:
        await db.migrate(COMPONENT, MIGRATIONS)
        queue = cls(db)
        # Holding a connection for LISTEN would leave a pool of one none for the queue itself.
        if db.pool.get_max_size() > 1:
            queue._listener = asyncio.create_task(queue._listen(), name="queue-listen")
        return queue

    async def close(self) -> None:
        await self._intake.close()
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener

    async def _listen(self) -> None:
        while True:
            try:
                await self._listen_once()
            except StorageUnavailable:
                pass
            except Exception:  # a bug must not stop the wake-ups for good
                log.exception("queue_listen_failed")
            await asyncio.sleep(_RELISTEN_SECONDS)

    async def _listen_once(self) -> None:
        """LISTEN on one pooled connection until it is lost."""
        async with self._db.connection() as conn:
            lost = asyncio.Event()
            conn.add_termination_listener(lambda _: lost.set())
            await conn.add_listener(_CHANNEL, self._notified)
            # Whatever changed while nobody listened was missed: look now.
            self._changed.notify()
            try:
                await lost.wait()
            finally:
                if not conn.is_closed():
                    await conn.remove_listener(_CHANNEL, self._notified)

    def _notified(self, *_: object) -> None:
        self._changed.notify()

    # --- intake and reads -------------------------------------------------------------------
    async def enqueue(self, job: NewJob, *, now: float) -> tuple[JobRecord, bool]:
        # An IdempotencyConflict comes back as this caller's result and is raised here.
        record, created = await self._intake.submit(Enqueue(job, now))
        if created:
            self._changed.notify()
        return record, created

    async def _insert(self, batch: list[Enqueue]) -> list[EnqueueOutcome]:
        """One transaction for a batch of enqueues: each job's outcome, a conflict as a value.
        Idle workers everywhere are woken by the insert trigger's NOTIFY, sent at commit."""
        # A key repeated within the batch is inserted once, by its first job.
        first_in_batch: dict[str, str] = {}
        inserts: list[NewJob] = []
        for item in batch:
            key = item.job.idempotency_key
            if key is None or key not in first_in_batch:
                inserts.append(item.job)
                if key is not None:
                    first_in_batch[key] = item.job.id
        # Keys in one order on every replica: two batches inserting the same keys then wait for
        # each other in that order, never in a cycle (a deadlock costs a second to detect). Only
        # jobs that arrived together are reordered, and their order was a race anyway.
        inserts.sort(key=lambda job: job.idempotency_key or "")
        nows = {item.job.id: item.now for item in batch}
        by_key: dict[str, JobRecord] = {}
        if not first_in_batch:
            # No keys: the one INSERT is the whole write, atomic and committed by itself, so
            # no BEGIN and COMMIT round trips.
            async with self._db.connection() as conn:
                rows = await conn.fetch(_INSERT, *_columns(inserts, nows))
            inserted = {str(r["id"]): job_record(r) for r in rows}
        else:
            # The read of lost keys shares the insert's transaction: if it fails, nothing was
            # stored, and the jobs can be retried one by one.
            async with self._db.transaction() as conn:
                rows = await conn.fetch(_INSERT, *_columns(inserts, nows))
                inserted = {str(r["id"]): job_record(r) for r in rows}
                # A key whose row was not inserted belongs to a job committed earlier, here or
                # by another replica; this statement's fresh snapshot sees it.
                lost = [k for k, job_id in first_in_batch.items() if job_id not in inserted]
                if lost:
                    winners = await conn.fetch(
                        f"SELECT {_COLUMNS} FROM jobs WHERE idempotency_key = ANY($1::text[])",
                        lost,
                    )
                    by_key = {str(r["idempotency_key"]): job_record(r) for r in winners}
        by_key.update({r.idempotency_key: r for r in inserted.values() if r.idempotency_key})
        outcomes: list[EnqueueOutcome] = []
        for item in batch:
            key = item.job.idempotency_key
            if item.job.id in inserted:
                outcomes.append((inserted[item.job.id], True))
                continue
            outcomes.append(answer_existing(by_key[cast(str, key)], item.job))
        return outcomes

    async def get(self, job_id: str) -> JobRecord | None:
        if unmatchable(job_id):
            return None
        async with self._db.connection() as conn:
            row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM jobs WHERE id = $1", job_id)
        return job_record(row) if row is not None else None

    async def list_jobs(
        self, *, states: Sequence[str] = (), limit: int = 50, before_seq: int | None = None
    ) -> list[JobRecord]:
        clauses: list[str] = []
        params: list[Any] = []
        if states:
            params.append(list(states))
            clauses.append(f"state = ANY(${len(params)}::text[])")
        if before_seq is not None:
            params.append(before_seq)
            clauses.append(f"seq < ${len(params)}")
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        params.append(limit)
        async with self._db.connection() as conn:
            rows = await conn.fetch(
                f"SELECT {_COLUMNS} FROM jobs {where} ORDER BY seq DESC LIMIT ${len(params)}",
                *params,
            )
        return [job_record(r) for r in rows]

    # --- the submitter's side ---------------------------------------------------------------
    async def claim(self, owner: str, *, lease_seconds: float, now: float) -> JobRecord | None:
        async with self._db.connection() as conn:
            row = await conn.fetchrow(CLAIM, owner, now + lease_seconds, now)
        return job_record(row) if row is not None else None

    async def heartbeat(self, job_id: str, owner: str, *, lease_seconds: float, now: float) -> bool:
        return await self._update(
            "UPDATE jobs SET available_at = $1"
            " WHERE id = $2 AND lease_owner = $3 AND state = 'queued'",
            now + lease_seconds,
            job_id,
            owner,
        )

    async def begin_attempt(
        self, job_id: str, owner: str, *, now: float, lookup_after: float
    ) -> bool:
        return await self._update(
            "UPDATE jobs SET attempts = attempts + 1, in_doubt = TRUE, lookup_after = $1"
            " WHERE id = $2 AND lease_owner = $3 AND state = 'queued'",
            lookup_after,
            job_id,
            owner,
        )

    async def record_submitted(
        self, job_id: str, owner: str, ci_job_id: str, *, now: float
    ) -> bool:
        return await self._update(
            "UPDATE jobs SET state = 'submitted', ci_job_id = $1, submitted_at = $2,"
            " in_doubt = FALSE, lease_owner = NULL, last_error_code = NULL,"
            " last_error_message = NULL"
            " WHERE id = $3 AND lease_owner = $4 AND state = 'queued'",
            ci_job_id,
            now,
            job_id,
            owner,
        )

    async def attach_ci_job(self, job_id: str, ci_job_id: str) -> bool:
        return await self._update(
            "UPDATE jobs SET ci_job_id = $1, in_doubt = FALSE WHERE id = $2 AND ci_job_id IS NULL",
            ci_job_id,
            job_id,
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
            "UPDATE jobs SET available_at = $1, lease_owner = NULL, in_doubt = $2,"
            " lookup_after = COALESCE($3, lookup_after), attempts = attempts + $4,"
            " last_error_code = COALESCE($5, last_error_code),"
            " last_error_message = COALESCE($6, last_error_message)"
            " WHERE id = $7 AND lease_owner = $8 AND state = 'queued'",
            available_at,
            in_doubt,
            lookup_after,
            int(count_attempt),
            error.code if error else None,
            error.message if error else None,
            job_id,
            owner,
        )
        self._changed.notify()
        return changed

    async def bury(
        self, job_id: str, owner: str, *, error: JobError, now: float, count_attempt: bool = False
    ) -> bool:
        changed = await self._update(
            "UPDATE jobs SET state = 'dead', finished_at = $1, lease_owner = NULL,"
            " last_error_code = $2, last_error_message = $3, attempts = attempts + $4"
            " WHERE id = $5 AND lease_owner = $6 AND state = 'queued'",
            now,
            error.code,
            error.message,
            int(count_attempt),
            job_id,
            owner,
        )
        self._changed.notify()
        return changed

    async def release(self, job_id: str, owner: str, *, now: float) -> bool:
        async with self._db.transaction() as conn:
            status = await conn.execute(
                "UPDATE jobs SET available_at = $1, lease_owner = NULL"
                " WHERE id = $2 AND lease_owner = $3 AND state = 'queued'",
                now,
                job_id,
                owner,
            )
            changed = _rowcount(status) > 0
            if changed:  # a replica shutting down: the others take its jobs at once
                await conn.execute(_NOTIFY)
        self._changed.notify()
        return changed

    # --- operator actions -------------------------------------------------------------------
    async def cancel_queued(self, job_id: str, *, now: float) -> JobRecord | None:
        if unmatchable(job_id):
            return None
        async with self._db.transaction() as conn:
            # Locked, so the record returned is the one the cancel replaced.
            row = await conn.fetchrow(
                f"SELECT {_COLUMNS} FROM jobs WHERE id = $1 AND state = 'queued' FOR UPDATE",
                job_id,
            )
            if row is None:
                return None
            await conn.execute(
                "UPDATE jobs SET state = 'cancelled', finished_at = $1, lease_owner = NULL"
                " WHERE id = $2",
                now,
                job_id,
            )
        self._changed.notify()
        return job_record(row)

    async def requeue_dead(self, job_id: str, *, now: float) -> JobRecord | None:
        if unmatchable(job_id):
            return None
        async with self._db.transaction() as conn:
            row = await conn.fetchrow(
                "UPDATE jobs SET state = 'queued', attempts = 0, available_at = $1,"
                " finished_at = NULL, lease_owner = NULL"
                f" WHERE id = $2 AND state = 'dead' RETURNING {_COLUMNS}",
                now,
                job_id,
            )
            if row is not None:
                await conn.execute(_NOTIFY)
        if row is None:
            return None
        self._changed.notify()
        return job_record(row)

    # --- the events side --------------------------------------------------------------------
    async def mark_running(self, job_id: str) -> bool:
        return await self._update(
            "UPDATE jobs SET state = 'running' WHERE id = $1 AND state = 'submitted'", job_id
        )

    async def finish(self, job_id: str, state: FinishState, *, at: float) -> bool:
        return await self._update(
            "UPDATE jobs SET state = $1, finished_at = $2, lease_owner = NULL"
            " WHERE id = $3 AND state NOT IN ('succeeded', 'failed', 'cancelled', 'dead')",
            state,
            at,
            job_id,
        )

    async def unfinished_batches(self, limit: int) -> list[JobRecord]:
        async with self._db.connection() as conn:
            rows = await conn.fetch(
                f"SELECT {_COLUMNS} FROM jobs WHERE state IN ('submitted', 'running')"
                " AND ci_job_id IS NOT NULL ORDER BY seq LIMIT $1",
                limit,
            )
        return [job_record(r) for r in rows]

    # --- observation ------------------------------------------------------------------------
    async def depth_by_state(self) -> dict[str, int]:
        async with self._db.connection() as conn:
            rows = await conn.fetch("SELECT state, COUNT(*) FROM jobs GROUP BY state")
        depth: dict[str, int] = dict.fromkeys(JOB_STATES, 0)
        depth.update({str(r[0]): int(r[1]) for r in rows})
        return depth

    async def oldest_queued_age(self, now: float) -> float:
        async with self._db.connection() as conn:
            # seq follows insertion, so the lowest queued seq is the oldest queued job.
            oldest = await conn.fetchval(
                "SELECT created_at FROM jobs WHERE state = 'queued' ORDER BY seq LIMIT 1"
            )
        return max(0.0, now - float(oldest)) if oldest is not None else 0.0

    async def next_available_at(self) -> float | None:
        async with self._db.connection() as conn:
            value = await conn.fetchval("SELECT MIN(available_at) FROM jobs WHERE state = 'queued'")
        return float(value) if value is not None else None

    async def wait_changed(self, max_wait: float) -> None:
        await self._changed.wait(max_wait)

    # --- helpers ----------------------------------------------------------------------------
    async def _update(self, sql: str, *params: Any) -> bool:
        async with self._db.connection() as conn:
            status = await conn.execute(sql, *params)
        return _rowcount(status) > 0


def _columns(jobs: Sequence[NewJob], nows: dict[str, float]) -> tuple[list[Any], ...]:
    """The insert's parameters: one list per column, in the order of ``_INSERT``."""
    return (
        [j.id for j in jobs],
        [j.bucket for j in jobs],
        [j.region for j in jobs],
        [j.tag for j in jobs],
        [j.job_level for j in jobs],
        [json.dumps(j.request, separators=(",", ":")) for j in jobs],
        [j.submit_name for j in jobs],
        [j.caller_callback for j in jobs],
        [j.via for j in jobs],
        [j.idempotency_key for j in jobs],
        [j.fingerprint for j in jobs],
        [nows[j.id] for j in jobs],
    )


def _rowcount(status: str) -> int:
    """Rows changed, from a command tag such as ``UPDATE 1``."""
    return int(status.rsplit(" ", 1)[-1])
