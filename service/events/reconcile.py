"""The reconciler: learns from CI what callbacks cannot say, at a cost that follows the work.

CI sends no event when a batch job ends, and no callback is guaranteed to arrive. For each batch
that exists at CI and has not ended here, a pass (every ``CIRELAY_RECONCILE_SECONDS``):

1. reads the batch (``GET /inventorytriggerjob/<id>``): one call;
2. until the listing is complete, lists the batch's media jobs (``GET /jobs``, oldest first, 100 a
   page) from where the last pass stopped: the page it ended on, asked again for media jobs added
   since, then up to ``CALLS_PER_PASS`` new pages, so that a pass costs the same whatever the
   batch's size. Each page's media jobs are recorded as our job's, which attaches
   their events that came without a per-job token (static token, Pulsar), and the progress is
   saved with them, so a pass after a restart, or on another replica, carries on from there. A
   media job on the page that ended more than ``CIRELAY_RECONCILE_GRACE_SECONDS`` ago with no
   TaskFinish gets one rebuilt from the page (``source: poll``, the ``event_id`` its callback
   carries, so whichever comes second is a duplicate). The first listing after the batch ended is
   the last one;
3. once the listing is complete, counts in storage the media jobs still missing their TaskFinish
   (no CI call). None: ``BatchFinish`` goes out and our job ends. Some, and the grace has passed
   since the batch ended: one sweep asks CI for them, by id (10 a call) or, when that costs more,
   by listing again (``CALLS_PER_PASS`` calls a pass, resumed where it stopped), and rebuilds
   their events; then the batch finishes.

Over a batch of N media jobs that costs N/100 listed pages, at most N/100 more for the sweep, and
two calls a pass (the batch, and its last page again while it runs). A pass holds one page.

On several replicas each one runs passes, and a batch is reconciled by whichever replica holds its
lease (``reconcile:<job id>``), renewed page by page: one replica per batch at a time, and a replica
that died lets go of its batches when their leases run out.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

import structlog

from service.ci.client import CIClient
from service.ci.errors import CIError
from service.ci.xml import BatchJob, MediaJobPage
from service.events.pipeline import EventPipeline
from service.identity import process_owner
from service.ingest.normalize import parse_ci_time
from service.metrics import Metrics
from service.queue import FinishState, JobRecord
from service.storage import Accounting, BatchProgress, Leases

log = structlog.get_logger(__name__)

BATCH_END_STATES: dict[str, FinishState] = {
    "Success": "succeeded",
    "Failed": "failed",
    "Cancel": "cancelled",
}
MEDIA_END_STATES = frozenset({"Success", "Failed", "Cancel"})
_BATCHES_PER_PASS = 500
PAGE_SIZE = 100  # CI's largest list page
IDS_PER_CALL = 10  # media jobs asked for by id in one ``GET /jobs/<id>,…``
# Media job calls one batch may make in one pass, besides the batch GET: a pass costs the same
# whatever the batch's size, and a large batch is caught up over a few passes.
CALLS_PER_PASS = 20
# A sweep under way, as kept in ``BatchProgress.sweep_token``: which kind, and where it is.
_BY_ID = "id"
_BY_PAGE = "page"


class Reconciler:
    def __init__(
        self,
        pipeline: EventPipeline,
        ci: CIClient,
        leases: Leases,
        metrics: Metrics,
        *,
        interval: float,
        grace: float,
        concurrency: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._pipeline = pipeline
        self._ci = ci
        self._leases = leases
        self._metrics = metrics
        self._owner = process_owner()
        self._interval = interval
        self._grace = grace
        self._concurrency = concurrency
        self._clock = clock

    async def run(self) -> None:
        """Start a pass every ``interval`` seconds (at once if the last one took longer) until
        cancelled."""
        while True:
            started = time.monotonic()
            try:
                with self._metrics.reconcile_pass.time():
                    await self.reconcile_once()
            except Exception:  # a failed pass is retried on the next tick, not fatal
                log.exception("reconcile_pass_failed")
            await asyncio.sleep(max(0.0, started + self._interval - time.monotonic()))

    async def reconcile_once(self) -> None:
        jobs = await self._pipeline.open_batches(_BATCHES_PER_PASS)
        limit = asyncio.Semaphore(self._concurrency)

        async def one(job: JobRecord) -> None:
            async with limit:
                if not await self._hold(job):
                    return  # another replica reconciles this batch
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
        end_state = BATCH_END_STATES.get(batch.state)
        progress = await self._pipeline.batch_progress(job, batch_id)
        if not progress.complete:
            progress = await self._list(job, batch, progress, ended=end_state is not None)
        await self._pipeline.mark_running_if_attached(job)
        if end_state is None or not progress.complete:
            return
        accounting = await self._pipeline.unaccounted(job, batch_id)
        if accounting.missing:
            batch_end = _epoch(batch.end_time)
            if batch_end is not None and self._clock() < batch_end + self._grace:
                return  # their callbacks may still come
            if not await self._sweep(job, batch, progress, accounting):
                return
            accounting = await self._pipeline.unaccounted(job, batch_id)
            if accounting.missing:
                # CI reported no end for them, or reported one that cannot be read (kept with
                # the refused callbacks): nothing more will come.
                log.warning(
                    "batch_media_jobs_without_event", job_id=job.id, count=accounting.missing
                )
        if await self._pipeline.finish_batch(job, batch, end_state):
            log.info("job_finished", job_id=job.id, ci_job_id=batch_id, state=end_state)
        await self._leases.release(_lease(job), self._owner)

    async def _list(
        self, job: JobRecord, batch: BatchJob, progress: BatchProgress, *, ended: bool
    ) -> BatchProgress:
        """Read up to ``CALLS_PER_PASS`` new pages of the batch's media jobs, recording each;
        the progress made."""
        token = progress.page_token
        seen = {token}
        for _ in range(CALLS_PER_PASS):
            page = await self._page(job, batch.job_id, token)
            missing = await self._pipeline.record_listing(
                dataclasses.replace(progress, page_token=token), _ids(page.jobs)
            )
            await self._rebuild(job, batch, page.jobs, missing)
            following = page.next_token
            if not following or following in seen:  # the last page (a repeating token too)
                progress = dataclasses.replace(progress, page_token=token, complete=ended)
                await self._pipeline.record_listing(progress, [])
                return progress
            seen.add(following)
            token = following
            if not await self._hold(job):
                break
        progress = dataclasses.replace(progress, page_token=token)
        await self._pipeline.record_listing(progress, [])
        return progress

    async def _sweep(
        self, job: JobRecord, batch: BatchJob, progress: BatchProgress, accounting: Accounting
    ) -> bool:
        """Ask CI once for the media jobs whose TaskFinish is still missing after the grace: by
        id when that takes fewer calls than listing the batch again, at most ``CALLS_PER_PASS``
        calls a pass. True once the sweep went through all of them."""
        sweep = progress.sweep_token
        if sweep is None:
            pages = math.ceil(accounting.recorded / PAGE_SIZE)
            by_id = accounting.missing <= IDS_PER_CALL * pages
            sweep = f"{_BY_ID if by_id else _BY_PAGE}:"
        kind, _, position = sweep.partition(":")
        for _ in range(CALLS_PER_PASS):
            if kind == _BY_ID:
                ids = await self._pipeline.missing_media(job, after=position, limit=IDS_PER_CALL)
                if not ids:
                    break
                found = await self._ci.get_media_jobs(job.bucket, job.region, ids)
                await self._rebuild(job, batch, found.jobs, set(ids), after_grace=True)
                position = ids[-1]
            else:
                page = await self._page(job, batch.job_id, position)
                missing = await self._pipeline.record_listing(
                    dataclasses.replace(progress, sweep_token=f"{kind}:{position}"),
                    _ids(page.jobs),
                )
                await self._rebuild(job, batch, page.jobs, missing, after_grace=True)
                if not page.next_token or page.next_token == position:
                    break
                position = page.next_token
            if not await self._hold(job):
                return False
        else:  # the calls of this pass are spent: carry on from here next pass
            progress = dataclasses.replace(progress, sweep_token=f"{kind}:{position}")
            await self._pipeline.record_listing(progress, [])
            return False
        await self._pipeline.record_listing(dataclasses.replace(progress, sweep_token=None), [])
        return True

    async def _page(self, job: JobRecord, batch_id: str, token: str) -> MediaJobPage:
        return await self._ci.list_media_jobs(
            job.bucket,
            job.region,
            tag=job.tag,
            inventory_trigger_job_id=batch_id,
            size=PAGE_SIZE,
            next_token=token,
            order_by_time="Asc",
        )

    async def _rebuild(
        self,
        job: JobRecord,
        batch: BatchJob,
        details: Iterable[dict[str, Any]],
        missing: set[str],
        *,
        after_grace: bool = False,
    ) -> None:
        """Rebuild the TaskFinish of each ended media job among ``missing`` whose callback is
        past the grace period (``after_grace``: the batch's end, so all of them are)."""
        now = self._clock()
        batch_end = _epoch(batch.end_time)
        for detail in details:
            media_id = _text(detail.get("JobId"))
            if media_id not in missing or _text(detail.get("State")) not in MEDIA_END_STATES:
                continue
            ended_at = _epoch(_text(detail.get("EndTime"))) or batch_end
            if not after_grace and (ended_at is None or now < ended_at + self._grace):
                continue  # its callback may still come
            result = await self._pipeline.ingest_polled(
                detail, cirelay_job_id=job.id, batch_id=batch.job_id
            )
            if result.new_events:
                log.info("event_reconciled", job_id=job.id, media_job_id=media_id)

    async def _hold(self, job: JobRecord) -> bool:
        """Take or renew this batch's lease; False when another replica holds it."""
        return await self._leases.acquire(
            _lease(job), self._owner, ttl=self._interval, now=self._clock()
        )


def _lease(job: JobRecord) -> str:
    return f"reconcile:{job.id}"


def _ids(details: Iterable[dict[str, Any]]) -> list[str]:
    return [media_id for media_id in (_text(d.get("JobId")) for d in details) if media_id]


def _text(value: Any) -> str | None:
    return value.strip() or None if isinstance(value, str) else None


def _epoch(stamp: str | None) -> float | None:
    """Epoch seconds of a CI or RFC 3339 time; None for ``-``, empty or unreadable."""
    try:
        text = parse_ci_time(stamp)
    except ValueError:
        return None
    return datetime.fromisoformat(text).timestamp() if text else None
