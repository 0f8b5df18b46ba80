"""What the service asks of storage: the job queue, the event log, leases; one bundle per backend.

Every backend (``sqlite/``, ``postgres/``) implements these with the same semantics, proven by the
same contract tests (``tests/storage/``). Nothing outside a backend holds SQL, imports a driver or
catches a driver's exceptions: a backend raises ``StorageUnavailable`` when it cannot serve a call.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from service.queue.protocol import JobQueue

# A place in the event feed. SQLite's single writer makes the insertion sequence enough, so its
# positions are ``(0, seq)``. On PostgreSQL a sequence value is taken before its transaction
# commits, so feed order is (transaction id, seq) and only rows of transactions older than every
# running one are served (see ``postgres/events.py``).
FeedPosition = tuple[int, int]
FEED_START: FeedPosition = (0, 0)


@dataclass(frozen=True)
class RejectedCallback:
    id: int
    received_at: str
    source: str
    reason: str
    message: str
    content_type: str
    body_bytes: int  # size of the body as received; ``body`` may be a truncated prefix
    body: bytes


@dataclass(frozen=True)
class BatchProgress:
    """How far the reconciler got through one batch's media jobs, kept so that a pass (on any
    replica, after any restart) asks CI only for what is new."""

    cirelay_job_id: str
    batch_id: str
    # The NextToken to list with next: the one the last page answered, or, when that page was the
    # last (no NextToken), the one it was asked with, so that media jobs added since are seen.
    page_token: str = ""
    # The batch had ended before its last page was read: every media job of it is recorded.
    complete: bool = False
    # A sweep over the listing for events still missing once the batch ended: where it resumes
    # (None: no sweep under way).
    sweep_token: str | None = None


@dataclass(frozen=True)
class Accounting:
    """A batch's recorded media jobs: how many, and how many still miss their TaskFinish."""

    recorded: int
    missing: int


class EventLog(Protocol):
    # --- writes -----------------------------------------------------------------------------
    async def store(self, events: Sequence[Mapping[str, Any]]) -> list[bool]:
        """Store events once by ``event_id``; one flag per event: True = new, False = duplicate.
        Returns only after the transaction holding them committed (group commit)."""
        ...

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
        """Keep a refused delivery (body cut to the configured size, the oldest dropped beyond
        the configured count and total bytes) for replay after a fix. ``size``: the bytes that
        arrived, when ``body`` is already a prefix of them."""
        ...

    # --- batch reconciliation ----------------------------------------------------------------
    # An event that came without a per-job token (static token, Pulsar) is attached to its job by
    # its media job id, through the media jobs the reconciler recorded: by ``store`` in the
    # statement that inserts it when the media job is already known, by ``record_listing`` for
    # events stored before, and by ``unaccounted`` for any that an insert running at the very
    # moment of the recording left unattached (possible on PostgreSQL, whose statements see
    # what was committed when they began): BatchFinish follows ``unaccounted``, never precedes it.

    async def batch_progress(self, cirelay_job_id: str) -> BatchProgress | None: ...

    async def record_listing(
        self, progress: BatchProgress, media_job_ids: Sequence[str]
    ) -> set[str]:
        """In one transaction: remember these media jobs as the batch's (again is harmless),
        attach their stored events, save ``progress``. Returns those of them still missing an
        attached TaskFinish."""
        ...

    async def unaccounted(self, cirelay_job_id: str, batch_id: str) -> Accounting:
        """Attach every stored event of the job's recorded media jobs (and give its own events
        the batch id), then count the media jobs still missing an attached TaskFinish."""
        ...

    async def missing_media(self, cirelay_job_id: str, *, after: str, limit: int) -> list[str]:
        """Recorded media jobs found missing their TaskFinish by ``unaccounted``, by id, after
        ``after``."""
        ...

    async def reattribute(
        self, cirelay_job_id: str, batch_id: str, media_job_ids: Iterable[str]
    ) -> list[str]:
        """Events of these media jobs (CI lists them under ``batch_id``) that are linked to
        another job or batch, linked to this job and batch instead; the source of each moved."""
        ...

    # --- reads ------------------------------------------------------------------------------
    async def feed(
        self,
        *,
        after: FeedPosition = FEED_START,
        limit: int = 100,
        job_id: str | None = None,
        event_type: str | None = None,
    ) -> list[tuple[FeedPosition, dict[str, Any]]]:
        """(position, event) in feed order after ``after``. Gap-free: once a position has been
        returned, no event committed later is ever placed before it. ``job_id`` matches our job
        id or CI's JobId (the media job's; the batch's for BatchFinish)."""
        ...

    async def for_job(
        self, cirelay_job_id: str, *, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """The events of one of our jobs, oldest first (the first ``limit`` of them)."""
        ...

    async def count_for_job(self, cirelay_job_id: str) -> int:
        """How many events one of our jobs has."""
        ...

    async def has_events(self, cirelay_job_id: str) -> bool: ...

    async def job_ids_with(self, event_type: str, job_ids: Iterable[str]) -> set[str]:
        """Which of these CI JobIds already have an event of ``event_type``."""
        ...

    # --- refused bodies: listing and replay ------------------------------------------------
    async def rejected(
        self,
        *,
        after: int = 0,
        limit: int = 100,
        reason: str | None = None,
        source: str | None = None,
    ) -> list[RejectedCallback]:
        """Refused deliveries kept for replay, oldest first, after id ``after``; optionally only
        those of one ``reason`` and one ``source``."""
        ...

    async def get_rejected(self, rejected_id: int) -> RejectedCallback | None: ...

    async def delete_rejected(self, rejected_id: int) -> None:
        """Forget a refused body (its replay was accepted)."""
        ...

    async def update_rejected(self, rejected_id: int, reason: str, message: str) -> None:
        """Record why a replayed body was refused again."""
        ...

    # --- the outbox (drained by the one publisher holding the ``outbox`` lease) -------------
    async def outbox_pending(self) -> int: ...

    async def outbox_batch(self, limit: int) -> list[tuple[int, dict[str, Any]]]:
        """The oldest unpublished events as (seq, event); ``outbox_done`` takes them off."""
        ...

    async def outbox_done(self, seqs: Iterable[int]) -> None: ...


class Leases(Protocol):
    """Named, expiring claims on a unit of background work, so that on N replicas one at a time
    does it and a replica that died lets go of it when its lease runs out."""

    async def acquire(self, name: str, owner: str, *, ttl: float, now: float) -> bool:
        """Take ``name`` for ``owner`` until ``now + ttl`` if it is free, expired, or already
        ``owner``'s (a renewal). True when ``owner`` holds it now."""
        ...

    async def release(self, name: str, owner: str) -> None:
        """Let go of ``name`` if ``owner`` holds it."""
        ...


DeliveryState = Literal["pending", "delivered", "dead"]
DELIVERY_STATES: tuple[DeliveryState, ...] = ("pending", "delivered", "dead")


@dataclass(frozen=True)
class NewDelivery:
    """One event (or one callback CI sent) owed to one destination, as fan-out decided it."""

    id: str  # the ``webhook-id``: stable across retries, the same if fan-out runs twice
    job_id: str | None  # our job, when the event has one
    event_id: str
    event_type: str
    kind: str  # ``callback`` (the job's own CallBack) or ``subscription`` (CIRELAY_WEBHOOK_URLS)
    url: str
    origin: str  # scheme://host:port: the unit of concurrency and of the circuit breaker
    chain: str  # deliveries of one chain are sent one after another, in fan-out order
    content_type: str
    body: bytes


@dataclass(frozen=True)
class Delivery:
    seq: int
    id: str
    job_id: str | None
    event_id: str
    event_type: str
    kind: str
    url: str
    origin: str
    content_type: str
    body: bytes
    state: DeliveryState
    attempts: int
    last_status: int | None  # the receiver's HTTP status, None when no answer came
    last_error: str | None
    created_at: float
    next_attempt_at: float
    delivered_at: float | None


class Deliveries(Protocol):
    """Outgoing webhooks: a durable table of deliveries, claimed under leases by any replica.

    Fan-out follows the event feed with a durable cursor, so the event row committed by the
    event log is itself the queue entry: an event stored just before a crash is fanned out after
    the restart. ``due`` never offers a delivery while an earlier one of its chain is pending.
    """

    # --- fan-out ----------------------------------------------------------------------------
    async def keep_body(self, event_id: str, content_type: str, body: bytes, *, now: float) -> None:
        """Keep a callback's body exactly as CI sent it, before its event is stored, so that
        the job's own CallBack receives the same bytes. A second copy is ignored."""
        ...

    async def bodies(self, event_ids: Iterable[str]) -> dict[str, tuple[str, bytes]]:
        """Kept bodies by event id: (content type, body)."""
        ...

    async def fanout_position(self, *, now: float) -> tuple[FeedPosition, float]:
        """Where fan-out stands in the event feed, and since when it runs (events received
        earlier predate deliveries and are skipped). The first call starts it at ``now``."""
        ...

    async def fan_out(
        self, deliveries: Sequence[NewDelivery], position: FeedPosition, *, now: float
    ) -> None:
        """Insert these deliveries (ids already present are skipped) and move the fan-out
        position to ``position``, in one transaction. The position never moves back."""
        ...

    # --- sending ----------------------------------------------------------------------------
    async def due(
        self, *, now: float, limit: int, skip_origins: Iterable[str] = ()
    ) -> list[tuple[str, str]]:
        """(id, origin) of deliveries that may be attempted now, soonest first: pending, due,
        not leased, first pending of their chain, and not to ``skip_origins``."""
        ...

    async def claim(
        self, ids: Sequence[str], owner: str, *, now: float, lease_seconds: float
    ) -> list[Delivery]:
        """Lease those of ``ids`` still claimable to ``owner``; another replica's claim on one
        is skipped, never waited for."""
        ...

    async def delivered(self, delivery_id: str, owner: str, *, status: int, now: float) -> bool: ...

    async def failed(
        self,
        delivery_id: str,
        owner: str,
        *,
        status: int | None,
        error: str,
        retry_at: float | None,
    ) -> bool:
        """Count a failed attempt: pending again at ``retry_at``, or ``dead`` when None."""
        ...

    async def next_due(self) -> float | None:
        """When the soonest pending delivery that heads its chain is due or its lease runs out
        (maybe already past); None if none."""
        ...

    # --- operators --------------------------------------------------------------------------
    async def get(self, delivery_id: str) -> Delivery | None: ...

    async def for_job(self, job_id: str) -> list[Delivery]:
        """The job's deliveries in fan-out order."""
        ...

    async def redeliver(self, delivery_id: str, *, now: float) -> Delivery | None:
        """A ``dead`` or ``delivered`` delivery pending again at once with a fresh schedule;
        None when it is pending already (or unknown)."""
        ...

    async def counts(self) -> dict[str, int]:
        """Deliveries per state, every state present."""
        ...

    async def job_counts(self, job_id: str) -> dict[str, int]:
        """One job's deliveries per state, every state present."""
        ...

    async def oldest_pending_created_at(self) -> float | None: ...

    async def prune(self, *, before: float, limit: int) -> dict[str, int]:
        """Retention, one step: delete up to ``limit`` delivered or dead deliveries created
        before ``before`` and up to ``limit`` kept bodies kept before it (a body is copied into
        its delivery at fan-out). Pending deliveries stay, however old. Rows deleted by table;
        empty when nothing is left."""
        ...


class Retention(Protocol):
    """Deleting what is past the retention period, a small transaction at a time, so that the
    writes of intake and ingestion interleave with it instead of waiting behind it."""

    async def prune_jobs(self, *, finished_before: float, limit: int) -> dict[str, int]:
        """One step over jobs that ended (any final state) before ``finished_before`` (epoch
        seconds): delete up to ``limit`` of their events (with their outbox entries), then of
        their recorded media jobs, then the jobs themselves (with their idempotency keys) once
        nothing of theirs is left. Rows deleted by table; empty when nothing is left to do."""
        ...

    async def prune_unattached_events(self, *, received_before: str, limit: int) -> int:
        """Delete up to ``limit`` of the oldest events attached to no job, received before
        ``received_before`` (RFC 3339 UTC); how many."""
        ...

    async def prune_rejected(self, *, received_before: str, limit: int) -> int:
        """Delete up to ``limit`` refused bodies received before ``received_before``; how many."""
        ...


class Storage(Protocol):
    """One backend's tables, opened and migrated together."""

    @property
    def queue(self) -> JobQueue: ...

    @property
    def events(self) -> EventLog: ...

    @property
    def leases(self) -> Leases: ...

    @property
    def deliveries(self) -> Deliveries: ...

    @property
    def retention(self) -> Retention: ...

    async def ping(self) -> None:
        """A round trip in a transaction (on SQLite one that takes the write lock); raises
        ``StorageUnavailable`` when the database cannot serve it."""
        ...

    async def close(self) -> None:
        """Commit writes already handed over, stop background tasks, close connections."""
        ...
