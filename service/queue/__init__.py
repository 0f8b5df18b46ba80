"""The durable internal job queue's contract; its backends live in ``service.storage``."""

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
    "Via",
]
