"""Stored rows back into the service's records, the same way on every backend."""

from __future__ import annotations

import json
from typing import Any, Protocol, cast

from service.queue.protocol import JobError, JobRecord, JobState, Via


class Row(Protocol):
    """A result row read by column name (``sqlite3.Row``, ``asyncpg.Record``)."""

    def __getitem__(self, key: str, /) -> Any: ...


def job_record(row: Row) -> JobRecord:
    """A ``jobs`` row (every column) as a ``JobRecord``."""
    code, message = row["last_error_code"], row["last_error_message"]
    return JobRecord(
        seq=int(row["seq"]),
        id=row["id"],
        state=cast(JobState, row["state"]),
        bucket=row["bucket"],
        region=row["region"],
        tag=row["tag"],
        job_level=int(row["job_level"]),
        request=json.loads(row["request"]),
        submit_name=row["submit_name"],
        caller_callback=row["caller_callback"],
        via=cast(Via, row["via"]),
        idempotency_key=row["idempotency_key"],
        fingerprint=row["fingerprint"],
        ci_job_id=row["ci_job_id"],
        attempts=int(row["attempts"]),
        last_error=JobError(code, message or "") if code is not None else None,
        in_doubt=bool(row["in_doubt"]),
        lookup_after=row["lookup_after"],
        created_at=float(row["created_at"]),
        available_at=float(row["available_at"]),
        submitted_at=row["submitted_at"],
        finished_at=row["finished_at"],
        lease_owner=row["lease_owner"],
    )
