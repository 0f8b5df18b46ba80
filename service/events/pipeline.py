"""One path for every event source: parse → normalise → link to job → store → job state → metrics.

The HTTP callback route, the Pulsar consumer and the reconciler all come through here, so an event
is keyed, linked and counted the same way whoever delivered it. A caller may acknowledge its
delivery (2xx, Pulsar ack) once ``ingest`` returns: the events are committed by then.

The reconciler reaches storage only through what this offers it: the batches to look at, their
recorded progress, a polled media job detail to ingest, and a batch's end.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import itertools
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple, Protocol

import structlog
from prometheus_client import Counter

from service.ci.xml import BatchJob
from service.events.canonical import CanonicalEvent, linked
from service.ingest.normalize import SOURCES, batch_finish_event, normalize
from service.ingest.parse import EventRejected, ParsedCallback, parse_callback
from service.metrics import Metrics
from service.queue import FinishState, JobQueue, JobRecord
from service.storage import Accounting, BatchProgress, EventLog
from service.timefmt import utc_text

log = structlog.get_logger(__name__)

EVENT_TYPES = ("TaskFinish", "WorkflowFinish", "BatchFinish")
# Rejection reason of a body whose parsing raised something other than ``EventRejected``.
UNREADABLE = "unreadable"
# Links of recently seen jobs, so a batch's many callbacks cost one job read, not one each.
_LINK_CACHE_SIZE = 4096
# Media jobs whose batch CI named (the reconciler's listings): enough for the batches in flight.
_BATCH_CACHE_SIZE = 65_536
# Rejection reason of a callback with more JobsDetail entries than CIRELAY_MAX_EVENTS_PER_CALLBACK.
TOO_MANY_EVENTS = "too_many_events"
# Bodies from this size on are parsed in a worker thread instead of on the event loop.
_OFFLOAD_BYTES = 64 * 1024
# Rejection reason of a callback whose media job CI lists under another batch than its token's.
WRONG_BATCH = "wrong_batch"


class IngestResult(NamedTuple):  # a tuple: cheap to build once per callback
    event_ids: tuple[str, ...]
    new_events: int
    duplicates: int


class BodyKeeper(Protocol):
    """Keeps a callback's body as CI sent it for the job's own CallBack (service.webhooks)."""

    async def keep(
        self, job_id: str, event_id: str, content_type: str, body: bytes, *, now: float
    ) -> None: ...


@dataclass(slots=True)
class _JobLink:
    batch_id: str  # the job's CI batch JobId: set once the job was submitted, never changed
    running: bool  # known to be past ``submitted``: no state change to make


class EventPipeline:
    def __init__(
        self,
        store: EventLog,
        queue: JobQueue,
        metrics: Metrics,
        *,
        max_depth: int,
        max_events: int = 1000,  # CIRELAY_MAX_EVENTS_PER_CALLBACK's default
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._queue = queue
        self._metrics = metrics
        self._max_depth = max_depth
        self._max_events = max_events
        # Started on first use (a body of _OFFLOAD_BYTES or more); stopped by close().
        self._parser = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="parser")
        self._clock = clock
        # Insertion-ordered: when full, the oldest link is dropped (it is only ever re-read).
        self._links: dict[str, _JobLink] = {}
        # Media job id -> batch id, as CI lists them: what a job token's claim is checked against.
        self._batches: dict[str, str] = {}
        # A label lookup costs more than the increment; the label sets are few and fixed, and
        # made at once so that every series exists (at 0) before its first event.
        self._received: dict[tuple[str, str, str], Counter] = {
            key: metrics.events_received.labels(*key)
            for key in itertools.product(SOURCES, ("xml", "json"), EVENT_TYPES)
        }
        for source in SOURCES:
            metrics.events_duplicate.labels(source)
        # Webhooks: a keeper of callback bodies, and who to tell that new events were stored.
        self.bodies: BodyKeeper | None = None
        self.on_new: list[Callable[[], None]] = []

    async def ingest(
        self,
        body: bytes,
        content_type: str,
        *,
        source: str,
        cirelay_job_id: str | None = None,
    ) -> IngestResult:
        """Take one delivered callback document; ``cirelay_job_id`` when the delivery named our
        job (a per-job callback token). Raises ``EventRejected`` after keeping the body."""
        received = datetime.fromtimestamp(self._clock(), UTC)
        try:
            events = await self._parse(body, content_type, source, received)
        except EventRejected as exc:
            await self.reject(
                body, content_type, source=source, reason=exc.reason, message=exc.message
            )
            raise
        link = None
        if cirelay_job_id is not None:
            link = self._links.get(cirelay_job_id) or await self._load_link(cirelay_job_id)
            batch_id = link.batch_id if link is not None else None
            if batch_id is not None:
                await self._check_batch(events, batch_id, body, content_type, source)
            events = [linked(e, cirelay_job_id=cirelay_job_id, batch_id=batch_id) for e in events]
            if self.bodies is not None and events:
                # Before the events: a stored event never lacks the body its CallBack is owed.
                await self.bodies.keep(
                    cirelay_job_id, events[0]["event_id"], content_type, body, now=self._clock()
                )
        return await self.store(events, link=link)

    async def replay(
        self, body: bytes, content_type: str, *, source: str, received: datetime
    ) -> IngestResult:
        """Run a kept refused body through today's parser and store its events. Raises
        ``EventRejected`` without keeping the body again: the caller updates the kept row."""
        return await self.store(await self._parse(body, content_type, source, received))

    async def _parse(
        self, body: bytes, content_type: str, source: str, received: datetime
    ) -> list[CanonicalEvent]:
        """The body's events, or ``EventRejected`` whatever the parser raised."""
        try:
            if len(body) < _OFFLOAD_BYTES:
                return self._read(body, content_type, source, received)
            # A big body takes long enough to parse to stall every other request (probes
            # included): parse it in the parser thread, which the loop preempts. One thread:
            # more would only compete with the loop for the GIL.
            return await asyncio.get_running_loop().run_in_executor(
                self._parser, self._read, body, content_type, source, received
            )
        except EventRejected:
            raise
        except Exception as exc:
            # Parsing is pure: whatever else it raises, the body is at fault, not the service.
            # Refused like any bad body (kept, counted, 4xx or dead letter), never retried.
            log.warning("event_parse_failed", source=source, exc_info=True)
            message = f"the body could not be read: {type(exc).__name__}"
            raise EventRejected(UNREADABLE, message) from exc

    def close(self) -> None:
        """Stop the parser thread (after the last ``ingest``)."""
        self._parser.shutdown(wait=True)

    def _read(
        self, body: bytes, content_type: str, source: str, received: datetime
    ) -> list[CanonicalEvent]:
        """Parse and normalise one body (pure, so it may run in a worker thread)."""
        parsed = parse_callback(body, content_type, max_depth=self._max_depth)
        details = parsed.body.get("JobsDetail")
        if isinstance(details, list) and len(details) > self._max_events:
            raise EventRejected(
                TOO_MANY_EVENTS,
                f"{len(details)} JobsDetail entries; at most {self._max_events}"
                " (CIRELAY_MAX_EVENTS_PER_CALLBACK)",
            )
        return normalize(parsed, source=source, received_at=received)

    async def claim_batch(
        self, cirelay_job_id: str, batch_id: str, media_job_ids: Sequence[str]
    ) -> None:
        """CI lists these media jobs under our job's batch (the reconciler's finding): from now
        on a callback about one of them under another job's token is refused, and events of them
        already stored under another job (before CI listed them) are moved to this job, counted
        as ``wrong_batch`` refusals of that attribution."""
        self.learn_batch(batch_id, media_job_ids)
        moved = await self._store.reattribute(cirelay_job_id, batch_id, media_job_ids)
        for source in moved:
            self._metrics.events_rejected.labels(source, WRONG_BATCH).inc()
        if moved:
            log.warning("events_reattributed", job_id=cirelay_job_id, count=len(moved))

    def learn_batch(self, batch_id: str, media_job_ids: Sequence[str]) -> None:
        """Remember which batch CI lists these media jobs under (from each listing recorded)."""
        for job_id in media_job_ids:
            self._batches.pop(job_id, None)
            self._batches[job_id] = batch_id
        while len(self._batches) > _BATCH_CACHE_SIZE:
            del self._batches[next(iter(self._batches))]

    async def _check_batch(
        self,
        events: Sequence[CanonicalEvent],
        batch_id: str,
        body: bytes,
        content_type: str,
        source: str,
    ) -> None:
        """Refuse a callback under one job's token about a media job of another batch: stored,
        it would be that job's event, and the real callback would then count as its duplicate."""
        for event in events:
            known = self._batches.get(event.get("job_id") or "")
            if known is not None and known != batch_id:
                message = (
                    f"media job {event['job_id']} belongs to batch {known}, not to this"
                    f" callback URL's batch {batch_id}"
                )
                await self.reject(
                    body, content_type, source=source, reason=WRONG_BATCH, message=message
                )
                raise EventRejected(WRONG_BATCH, message)

    async def store(
        self, events: Sequence[CanonicalEvent], *, link: _JobLink | None = None
    ) -> IngestResult:
        """Store canonical events, move their job to ``running``, count them."""
        flags = await self._store.store(events)
        new = []
        for event, is_new in zip(events, flags, strict=True):
            if is_new:
                new.append(event)
            else:
                self._metrics.events_duplicate.labels(event["source"]).inc()
        if new:
            await self._mark_running(new, link)
            for notify in self.on_new:
                notify()
        now = self._clock()
        for event in new:
            self._count_received(
                event["source"], event.get("format") or "none", event["event_type"]
            )
            ended = event.get("ended_at")
            if ended:
                self._metrics.event_lag.observe(max(0.0, now - _epoch(ended)))
        return IngestResult(
            event_ids=tuple(event["event_id"] for event in events),
            new_events=len(new),
            duplicates=len(events) - len(new),
        )

    def _count_received(self, source: str, fmt: str, event_type: str) -> None:
        key = (source, fmt, event_type)
        counter = self._received.get(key)
        if counter is None:
            counter = self._received[key] = self._metrics.events_received.labels(*key)
        counter.inc()

    async def reject(
        self,
        body: bytes,
        content_type: str,
        *,
        source: str,
        reason: str,
        message: str,
        size: int | None = None,
    ) -> None:
        """Keep a refused delivery's body (bounded) with its reason, and count it. ``size``:
        the bytes that arrived, when ``body`` is only the first of them."""
        received = datetime.fromtimestamp(self._clock(), UTC)
        if not content_type.isascii():  # kept as text: bytes that were not UTF-8 become U+FFFD
            content_type = content_type.encode(errors="replace").decode()
        await self._store.reject(
            received_at=utc_text(received),
            source=source,
            reason=reason,
            message=message,
            content_type=content_type,
            body=body,
            size=size,
        )
        self._metrics.events_rejected.labels(source, reason).inc()
        log.info(
            "event_rejected", source=source, reason=reason, size=len(body) if size is None else size
        )

    async def _load_link(self, cirelay_job_id: str) -> _JobLink | None:
        job = await self._queue.get(cirelay_job_id)
        if job is None or job.ci_job_id is None:
            # Not submitted yet as far as we know (CI called back before the submitter recorded
            # the JobId): the reconciler fills the batch id in later.
            return None
        link = _JobLink(batch_id=job.ci_job_id, running=job.state != "submitted")
        self._links[cirelay_job_id] = link
        if len(self._links) > _LINK_CACHE_SIZE:
            del self._links[next(iter(self._links))]
        return link

    async def _mark_running(self, new: list[CanonicalEvent], link: _JobLink | None) -> None:
        if link is not None and link.running:
            return
        for job_id in {job for e in new if (job := e["cirelay_job_id"]) is not None}:
            await self._queue.mark_running(job_id)
        if link is not None:
            link.running = True

    # --- what the reconciler needs --------------------------------------------------------------

    async def open_batches(self, limit: int) -> list[JobRecord]:
        """Our jobs that exist at CI and have not ended, oldest first."""
        return await self._queue.unfinished_batches(limit)

    async def batch_progress(self, job: JobRecord, batch_id: str) -> BatchProgress:
        return await self._store.batch_progress(job.id) or BatchProgress(job.id, batch_id)

    async def record_listing(self, progress: BatchProgress, media_job_ids: list[str]) -> set[str]:
        """Remember a listed page's media jobs as the job's, with the progress it brings; those
        of them still missing their TaskFinish. Events of them taken under another job's token
        move to this job (``claim_batch``)."""
        missing = await self._store.record_listing(progress, media_job_ids)
        if media_job_ids:
            await self.claim_batch(progress.cirelay_job_id, progress.batch_id, media_job_ids)
        return missing

    async def unaccounted(self, job: JobRecord, batch_id: str) -> Accounting:
        """Attach what events of the batch can be, then count its media jobs still missing one."""
        return await self._store.unaccounted(job.id, batch_id)

    async def missing_media(self, job: JobRecord, *, after: str, limit: int) -> list[str]:
        return await self._store.missing_media(job.id, after=after, limit=limit)

    async def mark_running_if_attached(self, job: JobRecord) -> None:
        """A job still ``submitted`` with events attached (some without a per-job token, which
        moved nothing when they were stored) becomes ``running``."""
        if job.state == "submitted" and await self._store.has_events(job.id):
            await self._queue.mark_running(job.id)

    async def ingest_polled(
        self, detail: dict[str, Any], *, cirelay_job_id: str, batch_id: str
    ) -> IngestResult:
        """The TaskFinish a media job's callback would have carried, rebuilt from CI's job query
        (``source: poll``). A detail that cannot be normalised is kept like a refused callback
        and counts as no event: it must not hold its batch open forever."""
        parsed = ParsedCallback(
            format="xml",
            event_name="TaskFinish",
            body={"EventName": "TaskFinish", "JobsDetail": [detail]},
        )
        received = datetime.fromtimestamp(self._clock(), UTC)
        try:
            events = normalize(parsed, source="poll", received_at=received)
        except EventRejected as exc:
            body = json.dumps(detail, ensure_ascii=False).encode()
            await self.reject(
                body, "application/json", source="poll", reason=exc.reason, message=exc.message
            )
            return IngestResult((), 0, 0)
        events = [linked(e, cirelay_job_id=cirelay_job_id, batch_id=batch_id) for e in events]
        result = await self.store(events)
        if result.new_events:
            self._metrics.events_reconciled.inc(result.new_events)
        return result

    async def finish_batch(self, job: JobRecord, batch: BatchJob, state: FinishState) -> bool:
        """Emit the batch's BatchFinish, then end our job; False when it had ended already.

        Stored before the job ends: a crash in between emits it again next pass, a duplicate.
        """
        now = self._clock()
        event = batch_finish_event(
            batch.detail,
            batch_id=batch.job_id,
            cirelay_job_id=job.id,
            tag=job.tag,
            state=batch.state,
            code=batch.code or None,
            message=batch.message or None,
            created_at=batch.creation_time or None,
            started_at=batch.start_time or None,
            ended_at=batch.end_time or None,
            received_at=datetime.fromtimestamp(now, UTC),
        )
        await self.store([event])
        ended_at = _epoch(event["ended_at"]) if event["ended_at"] else None
        if not await self._queue.finish(job.id, state, at=ended_at or now):
            return False
        self._metrics.jobs_finished.labels(job.tag, state).inc()
        created_at = event["created_at"]
        if created_at is not None and ended_at is not None:
            self._metrics.job_duration.labels(job.tag).observe(
                max(0.0, ended_at - _epoch(created_at))
            )
        return True


# A batch's callbacks share their end times (to the second): parse each stamp once.
@functools.lru_cache(maxsize=1024)
def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()
