"""The internal job queue's contract: job states, the stored record, and the backend protocol.

Every backend (``service/storage/sqlite/``, ``service/storage/postgres/``) implements ``JobQueue``
with the same semantics, proven by the contract tests in ``tests/storage/``:

- ``claim`` hands out the best available job — higher ``job_level`` first, then oldest — whose
  ``available_at`` has come, and leases it to one owner until ``now + lease_seconds``. The lease is
  stored as ``available_at`` itself: a claimed job is still ``queued`` but not available until its
  lease expires, so a worker that died simply lets its job become claimable again. A heartbeat
  pushes ``available_at`` forward; every write of a claimed job checks ``lease_owner`` so a worker
  that lost its lease cannot overwrite the new owner's progress.
- ``begin_attempt`` durably marks the job ``in_doubt`` *before* the create call is sent: from then
  on nobody may create it at CI again without first looking it up by its submission name, and not
  before ``lookup_after`` (until then the request may still be on its way to CI).
- Timestamps are epoch seconds (``float``) passed in by the caller, so tests control time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

JobState = Literal["queued", "submitted", "running", "succeeded", "failed", "cancelled", "dead"]
JOB_STATES: tuple[JobState, ...] = (
    "queued",
    "submitted",
    "running",
    "succeeded",
    "failed",
    "cancelled",
    "dead",
)
FinishState = Literal["succeeded", "failed", "cancelled"]
# States a job never leaves on its own; `dead` leaves only through an explicit retry.
FINAL_STATES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled", "dead"})
# States in which a batch exists at CI and has not ended yet.
AT_CI_STATES: frozenset[str] = frozenset({"submitted", "running"})

Via = Literal["http", "pulsar"]


@dataclass(frozen=True)
class JobError:
    """Why the last attempt failed: CI's error code (or a transport code) and its message."""

    code: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


@dataclass(frozen=True)
class NewJob:
    """Everything intake decided about a job before it is stored."""

    id: str
    bucket: str
    region: str
    tag: str
    job_level: int
    request: Mapping[str, Any]  # the inner Request as accepted (caller's Name and CallBack)
    submit_name: str  # the Name sent to CI, unique to this job (see service.intake)
    caller_callback: str
    via: Via
    idempotency_key: str | None = None
    fingerprint: str | None = None  # hash of what the idempotency key stands for


@dataclass(frozen=True)
class JobRecord:
    seq: int  # insertion order: the keyset for listing and the "oldest first" tie-breaker
    id: str
    state: JobState
    bucket: str
    region: str
    tag: str
    job_level: int
    request: Mapping[str, Any]
    submit_name: str
    caller_callback: str
    via: Via
    idempotency_key: str | None
    fingerprint: str | None
    ci_job_id: str | None
    attempts: int
    last_error: JobError | None
    in_doubt: bool
    lookup_after: float | None  # an in-doubt job is looked up at CI no earlier than this
    created_at: float
    available_at: float
    submitted_at: float | None
    finished_at: float | None
    lease_owner: str | None


class IdempotencyConflict(Exception):
    """The idempotency key is already used by a job enqueued with a different body."""

    def __init__(self, existing: JobRecord) -> None:
        super().__init__(f"idempotency key already used by job {existing.id}")
        self.existing = existing


class JobQueue(Protocol):
    # --- intake and reads -------------------------------------------------------------------
    async def enqueue(self, job: NewJob, *, now: float) -> tuple[JobRecord, bool]:
        """Store ``job`` as ``queued``; (record, True). With an idempotency key already used for
        the same fingerprint: (that job, False); for another fingerprint: IdempotencyConflict."""
        ...

    async def get(self, job_id: str) -> JobRecord | None: ...

    async def list_jobs(
        self, *, states: Sequence[str] = (), limit: int = 50, before_seq: int | None = None
    ) -> list[JobRecord]:
        """Newest first; ``before_seq`` is the keyset cursor (the last ``seq`` already seen)."""
        ...

    # --- the submitter's side ---------------------------------------------------------------
    async def claim(self, owner: str, *, lease_seconds: float, now: float) -> JobRecord | None:
        """Atomically lease the best available job to ``owner``, or None."""
        ...

    async def heartbeat(
        self, job_id: str, owner: str, *, lease_seconds: float, now: float
    ) -> bool: ...

    async def begin_attempt(
        self, job_id: str, owner: str, *, now: float, lookup_after: float
    ) -> bool:
        """Count an attempt and mark the job in doubt, durably, before the create call is sent."""
        ...

    async def record_submitted(
        self, job_id: str, owner: str, ci_job_id: str, *, now: float
    ) -> bool:
        """The job exists at CI as ``ci_job_id``: ``submitted``, lease and doubt cleared."""
        ...

    async def attach_ci_job(self, job_id: str, ci_job_id: str) -> bool:
        """Remember where a job that left ``queued`` meanwhile (cancelled) lives at CI."""
        ...

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
        """Give the job back to the queue, available again at ``available_at``
        (``lookup_after`` None keeps the stored one)."""
        ...

    async def bury(
        self, job_id: str, owner: str, *, error: JobError, now: float, count_attempt: bool = False
    ) -> bool:
        """Give up: ``dead`` with ``error``."""
        ...

    async def release(self, job_id: str, owner: str, *, now: float) -> bool:
        """Give a claimed job back untouched (shutdown): available at once."""
        ...

    # --- operator actions -------------------------------------------------------------------
    async def cancel_queued(self, job_id: str, *, now: float) -> JobRecord | None:
        """``queued`` → ``cancelled``; the record as it was before, or None if it was not queued."""
        ...

    async def requeue_dead(self, job_id: str, *, now: float) -> JobRecord | None:
        """``dead`` → ``queued`` with a fresh attempt budget; the new record, or None."""
        ...

    # --- the events side --------------------------------------------------------------------
    async def mark_running(self, job_id: str) -> bool:
        """``submitted`` → ``running``; False when the job was in any other state."""
        ...

    async def finish(self, job_id: str, state: FinishState, *, at: float) -> bool:
        """Set an end state unless the job already has one."""
        ...

    async def unfinished_batches(self, limit: int) -> list[JobRecord]:
        """Jobs that exist at CI and have not ended, oldest first."""
        ...

    # --- observation ------------------------------------------------------------------------
    async def depth_by_state(self) -> dict[str, int]:
        """Job count per state, every state present (0 when empty)."""
        ...

    async def oldest_queued_age(self, now: float) -> float:
        """Seconds since the oldest queued job was created; 0 when none is queued."""
        ...

    async def next_available_at(self) -> float | None:
        """When the next queued job becomes claimable (maybe already past); None if none queued."""
        ...

    async def wait_changed(self, max_wait: float) -> None:
        """Return when claimable work may have appeared (a job enqueued or given back), or after
        ``max_wait`` seconds. On SQLite only this process's changes wake it (other processes'
        are seen by polling); on PostgreSQL every replica's do (``LISTEN``/``NOTIFY``)."""
        ...
