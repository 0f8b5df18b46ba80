"""The reconciler: learns from CI what callbacks cannot say, every ``CIRELAY_RECONCILE_SECONDS``.

CI sends no event when a batch job ends and no callback is guaranteed to arrive. For each batch
that exists at CI and has not ended here, one pass:

1. reads the batch (``GET /inventorytriggerjob/<id>``) and lists its media jobs (``GET /jobs``);
2. links stored events of those media jobs to our job (callbacks that came without a per-job
   token: static token, Pulsar);
3. rebuilds, with ``source: poll``, the TaskFinish of every media job that ended more than
   ``CIRELAY_RECONCILE_GRACE_SECONDS`` ago and whose callback never came — the same ``event_id``
   the callback carries, so whichever arrives second is a duplicate and late callbacks win within
   the grace period;
4. once the batch has ended and every ended media job has its event, emits ``BatchFinish`` and
   ends our job (``succeeded``/``failed``/``cancelled``).

On several replicas each one runs passes, and a batch is reconciled by whichever replica takes its
lease (``reconcile:<job id>``, held for one interval): one replica per batch per interval, and a
replica that died lets go of its batches when their leases run out.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import structlog

from service.ci.client import CIClient
from service.ci.errors import CIError
from service.ci.xml import BatchJob
from service.events.pipeline import EventPipeline
from service.identity import process_owner
from service.ingest.document import reported_text
from service.ingest.normalize import batch_finish_event, normalize, parse_ci_time
from service.ingest.parse import EventRejected, ParsedCallback
from service.metrics import Metrics
from service.queue import FinishState, JobQueue, JobRecord
from service.storage import EventLog, Leases

log = structlog.get_logger(__name__)

BATCH_END_STATES: dict[str, FinishState] = {
    "Success": "succeeded",
    "Failed": "failed",
    "Cancel": "cancelled",
}
MEDIA_END_STATES = frozenset({"Success", "Failed", "Cancel"})
_BATCHES_PER_PASS = 500
_PAGE_SIZE = 100


class Reconciler:
    def __init__(
        self,
        queue: JobQueue,
        ci: CIClient,
        store: EventLog,
        leases: Leases,
        pipeline: EventPipeline,
        metrics: Metrics,
        *,
        interval: float,
        grace: float,
        concurrency: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._queue = queue
        self._ci = ci
        self._store = store
        self._leases = leases
        self._owner = process_owner()
        self._pipeline = pipeline
        self._metrics = metrics
        self._interval = interval
        self._grace = grace
        self._concurrency = concurrency
        self._clock = clock

    async def run(self) -> None:
        """Reconcile every ``interval`` seconds until cancelled."""
        while True:
            try:
                await self.reconcile_once()
            except Exception:  # a failed pass is retried on the next tick, not fatal
                log.exception("reconcile_pass_failed")
            await asyncio.sleep(self._interval)

    async def reconcile_once(self) -> None:
        jobs = await self._queue.unfinished_batches(_BATCHES_PER_PASS)
        limit = asyncio.Semaphore(self._concurrency)

        async def one(job: JobRecord) -> None:
            async with limit:
                lease = f"reconcile:{job.id}"
                if not await self._leases.acquire(
                    lease, self._owner, ttl=self._interval, now=self._clock()
                ):
                    return  # another replica reconciles this batch this interval
                try:
                    await self.reconcile_job(job)
                except CIError as exc:
                    log.warning(
                        "reconcile_ci_error", job_id=job.id, status=exc.status, code=exc.code
                    )
                except Exception:
                    log.exception("reconcile_job_failed", job_id=job.id)

        await asyncio.gather(*(one(job) for job in jobs))

    async def reconcile_job(self, job: JobRecord) -> None:
        batch_id = job.ci_job_id
        if batch_id is None:
            return
        batch = await self._ci.get(job.bucket, job.region, batch_id)
        if batch is None:
            log.warning("batch_unknown_at_ci", job_id=job.id, ci_job_id=batch_id)
            return
        media = await self._media_jobs(job, batch_id)
        ids = [job_id for detail in media if (job_id := reported_text(detail, "JobId"))]
        await self._store.link_job(job.id, batch_id, ids)
        await self._pipeline.claim_batch(job.id, batch_id, ids)

        ended = [d for d in media if reported_text(d, "State") in MEDIA_END_STATES]
        have = await self._store.job_ids_with(
            "TaskFinish", [job_id for d in ended if (job_id := reported_text(d, "JobId"))]
        )
        now = self._clock()
        batch_end = _epoch(batch.end_time)
        waiting = 0
        for detail in ended:
            if reported_text(detail, "JobId") in have:
                continue
            ended_at = _epoch(reported_text(detail, "EndTime")) or batch_end
            if ended_at is None or now < ended_at + self._grace:
                waiting += 1  # its callback may still come
                continue
            await self._recreate(detail, job, batch_id)

        if job.state == "submitted" and await self._store.has_events(job.id):
            await self._queue.mark_running(job.id)
        end_state = BATCH_END_STATES.get(batch.state)
        if end_state is not None and waiting == 0:
            await self._finish(job, batch, end_state)

    async def _media_jobs(self, job: JobRecord, batch_id: str) -> list[dict[str, Any]]:
        details: list[dict[str, Any]] = []
        token = ""
        seen: set[str] = set()
        while True:
            page = await self._ci.list_media_jobs(
                job.bucket,
                job.region,
                tag=job.tag,
                inventory_trigger_job_id=batch_id,
                size=_PAGE_SIZE,
                next_token=token,
                order_by_time="Asc",
            )
            details.extend(page.jobs)
            token = page.next_token
            if not token or token in seen:  # a repeating token would page forever
                return details
            seen.add(token)

    async def _recreate(self, detail: dict[str, Any], job: JobRecord, batch_id: str) -> None:
        """The TaskFinish its callback would have carried, rebuilt from CI's job query."""
        parsed = ParsedCallback(
            format="xml",
            event_name="TaskFinish",
            body={"EventName": "TaskFinish", "JobsDetail": [detail]},
        )
        received = datetime.fromtimestamp(self._clock(), UTC)
        try:
            events = normalize(parsed, source="poll", received_at=received)
        except EventRejected as exc:
            # Kept for replay like a refused callback; it must not hold its batch open forever.
            body = json.dumps(detail, ensure_ascii=False).encode()
            await self._pipeline.reject(
                body, "application/json", source="poll", reason=exc.reason, message=exc.message
            )
            return
        for event in events:
            event["cirelay_job_id"] = job.id
            event["batch_id"] = batch_id
        result = await self._pipeline.store(events)
        if result.new_events:
            self._metrics.events_reconciled.inc(result.new_events)
            log.info("event_reconciled", job_id=job.id, media_job_id=reported_text(detail, "JobId"))

    async def _finish(self, job: JobRecord, batch: BatchJob, end_state: FinishState) -> None:
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
        # Stored before the job ends: a crash in between re-emits it next pass, as a duplicate.
        await self._pipeline.store([event])
        ended_at = _epoch(event["ended_at"])
        finished = await self._queue.finish(job.id, end_state, at=ended_at or now)
        await self._leases.release(f"reconcile:{job.id}", self._owner)
        if not finished:
            return
        self._metrics.jobs_finished.labels(job.tag, end_state).inc()
        created_at = _epoch(event["created_at"])
        if created_at is not None and ended_at is not None:
            self._metrics.job_duration.labels(job.tag).observe(max(0.0, ended_at - created_at))
        log.info("job_finished", job_id=job.id, ci_job_id=batch.job_id, state=end_state)


def _epoch(stamp: str | None) -> float | None:
    """Epoch seconds of a CI or RFC 3339 time; None for ``-``, empty or unreadable."""
    try:
        text = parse_ci_time(stamp)
    except ValueError:
        return None
    return datetime.fromisoformat(text).timestamp() if text else None
