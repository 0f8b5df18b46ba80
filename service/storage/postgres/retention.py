"""Retention on PostgreSQL: old finished jobs and what hangs off them, deleted a small step at a
time, each step one short transaction (row locks on what it deletes, nothing else held)."""

from __future__ import annotations

from service.queue.protocol import FINAL_STATES
from service.storage.postgres.database import Database

# Jobs looked at in one step: their rows go first, the jobs once nothing of theirs is left.
_JOBS_PER_STEP = 16
_FINAL = sorted(FINAL_STATES)


class PostgresRetention:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def prune_jobs(self, *, finished_before: float, limit: int) -> dict[str, int]:
        deleted: dict[str, int] = {}
        async with self._db.transaction() as conn:
            # Leases expired before the cutoff belong to work long gone (a live one is renewed
            # within seconds): the reconcile lease of a job cancelled, say.
            stale = await conn.fetchval(
                "WITH gone AS (DELETE FROM leases WHERE name IN (SELECT name FROM leases"
                " WHERE expires_at < $1 LIMIT $2 FOR UPDATE SKIP LOCKED) RETURNING 1)"
                " SELECT COUNT(*) FROM gone",
                finished_before,
                limit,
            )
            if stale:
                deleted["leases"] = int(stale)
            # SKIP LOCKED: a job another step (or the queue) holds is left for later.
            rows = await conn.fetch(
                "SELECT id FROM jobs WHERE finished_at IS NOT NULL AND finished_at < $1"
                " AND state = ANY($2::text[]) ORDER BY finished_at LIMIT $3"
                " FOR UPDATE SKIP LOCKED",
                finished_before,
                _FINAL,
                _JOBS_PER_STEP,
            )
            ids = [row[0] for row in rows]
            if not ids:
                return deleted
            budget = limit
            for table, key, column in (
                ("events", "seq", "cirelay_job_id"),
                ("batch_media", "media_job_id", "cirelay_job_id"),
            ):
                gone = await conn.fetchval(
                    f"WITH gone AS (DELETE FROM {table} WHERE {key} IN (SELECT {key} FROM {table}"
                    f" WHERE {column} = ANY($1::text[]) LIMIT $2) RETURNING 1)"
                    " SELECT COUNT(*) FROM gone",
                    ids,
                    budget,
                )
                if gone:
                    deleted[table] = int(gone)
                budget -= int(gone)
                if budget <= 0:
                    return deleted  # more of theirs to delete: the jobs wait for a later step
            await conn.execute(
                "DELETE FROM batch_progress WHERE cirelay_job_id = ANY($1::text[])", ids
            )
            gone = await conn.fetchval(
                "WITH gone AS (DELETE FROM jobs WHERE id = ANY($1::text[]) RETURNING 1)"
                " SELECT COUNT(*) FROM gone",
                ids,
            )
            if gone:
                deleted["jobs"] = int(gone)
        return deleted

    async def prune_unattached_events(self, *, received_before: str, limit: int) -> int:
        async with self._db.transaction() as conn:
            # Oldest first by seq (the order they came in): stop at the first one to keep.
            rows = await conn.fetch(
                "SELECT seq, received_at FROM events WHERE cirelay_job_id IS NULL"
                " ORDER BY seq LIMIT $1",
                limit,
            )
            old = []
            for seq, received_at in rows:
                if received_at >= received_before:
                    break
                old.append(seq)
            if not old:
                return 0
            await conn.execute("DELETE FROM events WHERE seq = ANY($1::bigint[])", old)
            return len(old)

    async def prune_rejected(self, *, received_before: str, limit: int) -> int:
        async with self._db.transaction() as conn:
            gone = await conn.fetchval(
                "WITH gone AS (DELETE FROM rejected_callbacks WHERE id IN (SELECT id"
                " FROM rejected_callbacks WHERE received_at < $1 ORDER BY id LIMIT $2)"
                " RETURNING 1) SELECT COUNT(*) FROM gone",
                received_before,
                limit,
            )
            return int(gone)
