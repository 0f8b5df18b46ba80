"""What the service asks of storage: the job queue, the event log, leases; one bundle per backend.

Every backend (``sqlite/``, ``postgres/``) implements these with the same semantics, proven by the
same contract tests (``tests/storage/``). Nothing outside a backend holds SQL, imports a driver or
catches a driver's exceptions: a backend raises ``StorageUnavailable`` when it cannot serve a call.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

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
    ) -> None:
        """Keep a refused delivery (body cut to the configured size) for replay after a fix."""
        ...

    async def link_job(
        self, cirelay_job_id: str, batch_id: str, media_job_ids: Iterable[str]
    ) -> int:
        """Attach events to their batch and job: the job's own events that lacked the batch id,
        and events of the batch's media jobs that came without a per-job token. Existing links
        are kept. Returns rows changed."""
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

    async def for_job(self, cirelay_job_id: str) -> list[dict[str, Any]]:
        """Every event of one of our jobs, oldest first."""
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


class Storage(Protocol):
    """One backend's tables, opened and migrated together."""

    @property
    def queue(self) -> JobQueue: ...

    @property
    def events(self) -> EventLog: ...

    @property
    def leases(self) -> Leases: ...

    async def ping(self) -> None:
        """A round trip in a transaction (on SQLite one that takes the write lock); raises
        ``StorageUnavailable`` when the database cannot serve it."""
        ...

    async def close(self) -> None:
        """Commit writes already handed over, stop background tasks, close connections."""
        ...
