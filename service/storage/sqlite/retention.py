"""Retention on SQLite: old finished jobs and what hangs off them, deleted a small step at a time.

Every step is one short write transaction: SQLite has one writer, so a long delete would hold up
every callback and intake behind it.
"""

from __future__ import annotations

from service.queue.protocol import FINAL_STATES
from service.storage.sqlite.database import Database, marks

# Jobs looked at in one step: their rows go first, the jobs once nothing of theirs is left.
_JOBS_PER_STEP = 16
_FINAL = sorted(FINAL_STATES)


class SQLiteRetention:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def prune_jobs(self, *, finished_before: float, limit: int) -> dict[str, int]:
        deleted: dict[str, int] = {}
        async with self._db.transaction() as conn:
            # Leases expired before the cutoff belong to work long gone (a live one is renewed
            # within seconds): the reconcile lease of a job cancelled, say.
            cur = await conn.execute(
                "DELETE FROM leases WHERE name IN (SELECT name FROM leases WHERE expires_at < ?"
                " LIMIT ?)",
                (finished_before, limit),
            )
            if cur.rowcount:
                deleted["leases"] = cur.rowcount
            rows = await conn.execute_fetchall(
                "SELECT id FROM jobs WHERE finished_at IS NOT NULL AND finished_at < ?"
                f" AND state IN ({marks(_FINAL)}) ORDER BY finished_at LIMIT ?",
                (finished_before, *_FINAL, _JOBS_PER_STEP),
            )
            ids = [row[0] for row in rows]
            if not ids:
                return deleted
            budget = limit
            for table, key, column in (
                ("events", "seq", "cirelay_job_id"),
                ("batch_media", "media_job_id", "cirelay_job_id"),
            ):
                cur = await conn.execute(
                    f"DELETE FROM {table} WHERE {key} IN (SELECT {key} FROM {table}"
                    f" WHERE {column} IN ({marks(ids)}) LIMIT ?)",
                    (*ids, budget),
                )
                if cur.rowcount:
                    deleted[table] = cur.rowcount
                budget -= cur.rowcount
                if budget <= 0:
                    return deleted  # more of theirs to delete: the jobs wait for a later step
            await conn.execute(
                f"DELETE FROM batch_progress WHERE cirelay_job_id IN ({marks(ids)})", ids
            )
            cur = await conn.execute(f"DELETE FROM jobs WHERE id IN ({marks(ids)})", ids)
            if cur.rowcount:
                deleted["jobs"] = cur.rowcount
        return deleted

    async def prune_unattached_events(self, *, received_before: str, limit: int) -> int:
        async with self._db.transaction() as conn:
            # Oldest first by seq (the order they came in): stop at the first one to keep.
            rows = await conn.execute_fetchall(
                "SELECT seq, received_at FROM events WHERE cirelay_job_id IS NULL"
                " ORDER BY seq LIMIT ?",
                (limit,),
            )
            old = []
            for seq, received_at in rows:
                if received_at >= received_before:
                    break
                old.append(seq)
            if not old:
                return 0
            cur = await conn.execute(f"DELETE FROM events WHERE seq IN ({marks(old)})", old)
            return int(cur.rowcount)

    async def prune_rejected(self, *, received_before: str, limit: int) -> int:
        async with self._db.transaction() as conn:
            cur = await conn.execute(
                "DELETE FROM rejected_callbacks WHERE id IN (SELECT id FROM rejected_callbacks"
                " WHERE received_at < ? ORDER BY id LIMIT ?)",
                (received_before, limit),
            )
            return int(cur.rowcount)
