"""The durable internal job queue: the backend protocol and its SQLite implementation."""

from service.queue.protocol import (
    AT_CI_STATES,
    FINAL_STATES,
    JOB_STATES,
    FinishState,
    IdempotencyConflict,
    JobError,
    JobQueue,
    JobRecord,
    JobState,
    NewJob,
    Via,
)
from service.queue.sqlite import SQLiteJobQueue

__all__ = [
    "AT_CI_STATES",
    "FINAL_STATES",
    "JOB_STATES",
    "FinishState",
    "IdempotencyConflict",
    "JobError",
    "JobQueue",
    "JobRecord",
    "JobState",
    "NewJob",
    "SQLiteJobQueue",
    "Via",
]
