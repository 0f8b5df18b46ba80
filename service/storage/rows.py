"""Stored rows back into records, and enqueue answers, the same way on every backend."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol, cast

from service.queue.protocol import IdempotencyConflict, JobError, JobRecord, JobState, NewJob, Via


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


@dataclass(frozen=True, slots=True)
class Enqueue:
    """One caller's job handed to a queue's group-commit writer."""

    job: NewJob
    now: float


# What an enqueue's caller is answered: (record, created), or an IdempotencyConflict to raise.
EnqueueOutcome = tuple[JobRecord, bool] | Exception


def answer_existing(record: JobRecord, job: NewJob) -> EnqueueOutcome:
    """The answer to enqueueing ``job`` under an idempotency key ``record`` already holds: that
    job (not created) when it stands for the same request, a conflict otherwise."""
    if record.fingerprint != job.fingerprint:
        return IdempotencyConflict(record)
    return record, False
