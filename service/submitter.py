"""Workers that take jobs from the queue to CI: claim → create at CI → record.

Each job reaches CI once. Before the create call is sent, the job is durably marked ``in_doubt``
(``JobQueue.begin_attempt``). Whoever next holds an in-doubt job — the same worker after an
unclear answer, another worker after a crash — first looks it up through CI's list call by its
submission name (``service.intake.submission_name``) and adopts the CI job it finds instead of
creating another. After an answer (a 5xx, a timeout) the lookup may happen at once; after a crash
it waits until ``ci_timeout_seconds`` past the send, so that a request still travelling to CI has
arrived (or been given up) before we decide it did not.

Failures: throttling slows the (region, bucket) down (``service.ratelimit``); retryable errors
come back after a full-jitter backoff; permanent errors and exhausted attempts make the job
``dead`` with CI's code and message.
"""

from __future__ import annotations

import asyncio
import copy
import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, Protocol

import structlog

from service.backoff import full_jitter
from service.ci.errors import CIError, CIPermanentError
from service.ci.xml import BatchJob, BatchJobPage
from service.identity import process_owner
from service.metrics import Metrics
from service.queue import JobError, JobQueue, JobRecord
from service.ratelimit import RateLimiter
from service.request import RequestInvalid, request_from_tree
from service.settings import Settings
from service.storage import StorageUnavailable
from service.tokens import callback_token

log = structlog.get_logger(__name__)

Outcome = Literal["created", "adopted", "retry", "dead", "cancelled"]
OUTCOMES: tuple[Outcome, ...] = ("created", "adopted", "retry", "dead", "cancelled")

# Pages of CI's list call read while looking for an in-doubt submission. Names are unique per
# job, so more than one match means something else went wrong; the cap bounds a confused lookup.
_LOOKUP_PAGES = 10
_LOOKUP_PAGE_SIZE = 100


class BatchJobs(Protocol):
    """The part of ``service.ci.client.CIClient`` the submitter uses."""

    async def create(self, bucket: str, region: str, request_xml: bytes) -> BatchJob: ...

    async def list(
        self,
        bucket: str,
        region: str,
        *,
        type: str = "Job",
        name: str = "",
        states: Sequence[str] = (),
        size: int = 10,
        next_token: str = "",
    ) -> BatchJobPage: ...

    async def cancel(self, bucket: str, region: str, job_id: str) -> None: ...


def submission_xml(settings: Settings, job: JobRecord) -> bytes:
    """The body sent to CI: the stored Request under its unique Name and cirelay's CallBack."""
    return request_xml(settings, job.request, job.id, job.submit_name)


def request_xml(
    settings: Settings, request: Mapping[str, Any], job_id: str, submit_name: str
) -> bytes:
    """``request`` as it is sent to CI for job ``job_id`` under ``submit_name``."""
    tree: dict[str, Any] = copy.deepcopy(dict(request))
    tree["Name"] = submit_name
    url = _callback_url(settings, request, job_id)
    if url is not None:
        tree["Operation"]["CallBack"] = url
    return request_from_tree(tree).to_xml()


def _callback_url(settings: Settings, request: Mapping[str, Any], job_id: str) -> str | None:
    """Where CI should call back for job ``job_id``, or None to leave the Request's choice alone:
    when the Request asked for TDMQ delivery or no callbacks (``no``), or no public URL is set."""
    operation = request.get("Operation", {})
    if operation.get("CallBackType") == "TDMQ" or operation.get("CallBack") == "no":
        return None
    if not settings.public_url:
        return None
    token = callback_token(settings.callback_key, job_id)
    return f"{settings.public_url.rstrip('/')}/v1/callbacks/{token}"


async def find_submission(ci: BatchJobs, job: JobRecord) -> str | None:
    """CI's JobId for the batch created under ``job.submit_name``, if CI has one."""
    token = ""
    for _ in range(_LOOKUP_PAGES):
        page = await ci.list(
            job.bucket,
            job.region,
            name=job.submit_name,
            size=_LOOKUP_PAGE_SIZE,
            next_token=token,
        )
        for found in page.jobs:
            if found.name == job.submit_name and found.job_id:
                return found.job_id
        token = page.next_token
        if not token:
            return None
    return None


def preinitialise_outcomes(metrics: Metrics) -> None:
    for outcome in OUTCOMES:
        metrics.jobs_submitted.labels(outcome)


def error_of(exc: CIError) -> JobError:
    return JobError(exc.code or f"HTTP{exc.status}", exc.message)


class Submitter:
    def __init__(
        self,
        queue: JobQueue,
        ci: BatchJobs,
        limiter: RateLimiter,
        settings: Settings,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self._queue = queue
        self._ci = ci
        self._limiter = limiter
        self._settings = settings
        self._metrics = metrics
        self._clock = clock
        self._rng = rng or random.Random()
        self._owner = process_owner()
        self._stopping = False
        self._tasks: list[asyncio.Task[int]] = []
        self._idle: set[asyncio.Task[Any]] = set()

    # --- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        """Run ``settings.workers`` workers until ``stop``."""
        self._tasks = [
            asyncio.create_task(self._work(f"{self._owner}/{i}", burst=False), name=f"submit-{i}")
            for i in range(self._settings.workers)
        ]

    async def run_burst(self) -> int:
        """Work until no queued job is left (waiting out backoffs), then return the number of
        jobs handled: arq's burst mode, which makes queue tests deterministic."""
        counts = await asyncio.gather(
            *(
                self._work(f"{self._owner}/burst-{i}", burst=True)
                for i in range(self._settings.workers)
            )
        )
        return sum(counts)

    async def stop(self, grace: float) -> None:
        """Stop claiming; give in-flight jobs ``grace`` seconds, then release what is left."""
        self._stopping = True
        for task in list(self._idle):
            task.cancel()
        if not self._tasks:
            return
        _, pending = await asyncio.wait(self._tasks, timeout=grace)
        for task in pending:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        log.info("submitter_stopped", released=len(pending))

    # --- the worker loop --------------------------------------------------------------------
    async def _work(self, owner: str, *, burst: bool) -> int:
        handled = 0
        while not self._stopping:
            try:
                job = await self._queue.claim(
                    owner, lease_seconds=self._settings.lease_seconds, now=self._clock()
                )
            except Exception:  # e.g. the database stayed locked: keep the worker alive
                log.exception("claim_failed", owner=owner)
                await asyncio.sleep(self._settings.poll_interval_seconds)
                continue
            if job is None:
                try:
                    more = await self._idle_wait(burst)
                except Exception:  # the database went away between the claim and the wait
                    log.exception("idle_wait_failed", owner=owner)
                    await asyncio.sleep(self._settings.poll_interval_seconds)
                    continue
                if not more:
                    break
                continue
            if self._stopping:
                await self._queue.release(job.id, owner, now=self._clock())
                break
            try:
                await self._handle(job, owner)
            except asyncio.CancelledError:
                # Shutdown ran out of grace: hand the job back for the next process. If the
                # create call was in flight, the job stays in doubt and will be looked up.
                await asyncio.shield(self._queue.release(job.id, owner, now=self._clock()))
                log.info("job_released", job_id=job.id)
                raise
            except Exception:
                # Its outcome could not be recorded (the database went away): the worker lives
                # on, and the job is claimed again once its lease runs out (looked up at CI
                # first, since begin_attempt left it in doubt).
                log.exception("job_outcome_unrecorded", job_id=job.id)
            handled += 1
        return handled

    async def _idle_wait(self, burst: bool) -> bool:
        """Wait for work; False when a burst run is done (nothing queued at all)."""
        next_at = await self._queue.next_available_at()
        if burst and next_at is None:
            return False
        timeout = self._settings.poll_interval_seconds
        if next_at is not None:
            timeout = min(timeout, max(0.0, next_at - self._clock()))
        if self._stopping:  # stop() ran while we looked: it could not cancel a wait not yet begun
            return False
        task = asyncio.current_task()
        assert task is not None
        self._idle.add(task)
        try:
            await self._queue.wait_changed(timeout)
        except asyncio.CancelledError:
            if self._stopping:
                return False
            raise
        finally:
            self._idle.discard(task)
        return True

    async def _handle(self, job: JobRecord, owner: str) -> None:
        heartbeat = asyncio.create_task(self._heartbeat(job.id, owner))
        try:
            await self._submit(job, owner)
        except Exception as exc:  # a bug must not kill the worker or lose the job
            log.exception("submit_crashed", job_id=job.id)
            # In doubt to be safe: the failure may have come after the create call was sent.
            await self._retry_or_bury(
                job,
                owner,
                job.attempts + 1,
                JobError("SubmitterCrashed", repr(exc)),
                in_doubt=True,
                count_attempt=True,
            )
        finally:
            heartbeat.cancel()

    async def _heartbeat(self, job_id: str, owner: str) -> None:
        interval = self._settings.lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            try:
                held = await self._queue.heartbeat(
                    job_id, owner, lease_seconds=self._settings.lease_seconds, now=self._clock()
                )
            except StorageUnavailable as exc:
                # The database is away for now: keep beating, so the lease is renewed as soon
                # as it is back (a heartbeat that gave up would let the lease lapse while the
                # create call is still in flight).
                log.warning("heartbeat_failed", job_id=job_id, error=str(exc))
                continue
            if not held:
                log.warning("lease_lost", job_id=job_id)
                return

    async def _submit(self, job: JobRecord, owner: str) -> None:
        if job.in_doubt and await self._resolve_doubt(job, owner):
            return
        try:
            body = submission_xml(self._settings, job)
        except RequestInvalid as exc:  # stored before a validation rule changed
            await self._bury(job, owner, JobError("InvalidRequest", str(exc)))
            return
        key = (job.region, job.bucket)
        await self._limiter.acquire(key)
        now = self._clock()
        lookup_after = now + self._settings.ci_timeout_seconds
        if not await self._queue.begin_attempt(job.id, owner, now=now, lookup_after=lookup_after):
            await self._lost(job)
            return
        attempts = job.attempts + 1
        try:
            async with self._limiter.slot():
                created = await self._ci.create(job.bucket, job.region, body)
        except CIError as exc:
            if exc.throttled and self._limiter.throttled(key):
                log.info(
                    "ci_rate_reduced",
                    region=job.region,
                    bucket=job.bucket,
                    rate=self._limiter.rate(key),
                )
            if isinstance(exc, CIPermanentError):
                await self._bury(job, owner, error_of(exc))
            else:
                # An answer (or our own timeout) ends the request's journey: if it is in doubt,
                # it can be looked up at once.
                await self._retry_or_bury(
                    job,
                    owner,
                    attempts,
                    error_of(exc),
                    in_doubt=exc.in_doubt,
                    lookup_after=self._clock(),
                )
            return
        self._limiter.succeeded(key)
        await self._record(job, owner, created.job_id, "created")

    async def _resolve_doubt(self, job: JobRecord, owner: str) -> bool:
        """Settle an earlier attempt that may have reached CI. True when the job was dealt with
        (adopted, deferred or given up), False when it is safe to create it now."""
        if job.lookup_after is not None and self._clock() < job.lookup_after:
            await self._queue.retry_later(
                job.id, owner, error=None, available_at=job.lookup_after, in_doubt=True
            )
            return True
        try:
            async with self._limiter.slot():
                found = await find_submission(self._ci, job)
        except CIError as exc:
            await self._retry_or_bury(
                job, owner, job.attempts + 1, error_of(exc), in_doubt=True, count_attempt=True
            )
            return True
        if found is None:
            log.info("in_doubt_not_found", job_id=job.id, name=job.submit_name)
            return False
        await self._record(job, owner, found, "adopted")
        return True

    async def _record(self, job: JobRecord, owner: str, ci_job_id: str, outcome: Outcome) -> None:
        if await self._queue.record_submitted(job.id, owner, ci_job_id, now=self._clock()):
            self._count(outcome)
            log.info(
                "job_submitted",
                job_id=job.id,
                ci_job_id=ci_job_id,
                outcome=outcome,
                attempts=job.attempts + (outcome == "created"),
            )
            return
        current = await self._queue.get(job.id)
        if current is not None and current.state == "cancelled":
            # Cancelled while the create call was in flight: do not leave it running at CI.
            await self._queue.attach_ci_job(job.id, ci_job_id)
            try:
                async with self._limiter.slot():
                    await self._ci.cancel(job.bucket, job.region, ci_job_id)
            except CIError as exc:
                log.warning(
                    "cancel_at_ci_failed", job_id=job.id, ci_job_id=ci_job_id, code=exc.code
                )
            self._count("cancelled")
            log.info("job_cancelled_at_ci", job_id=job.id, ci_job_id=ci_job_id)
            return
        # Our lease expired and another worker holds the job; it is still in doubt, so that
        # worker finds this CI job by name instead of creating a second one.
        log.warning("lease_lost_after_create", job_id=job.id, ci_job_id=ci_job_id)

    async def _lost(self, job: JobRecord) -> None:
        current = await self._queue.get(job.id)
        if current is not None and current.state == "cancelled":
            self._count("cancelled")
        log.info("job_left_queue", job_id=job.id, state=current.state if current else None)

    async def _retry_or_bury(
        self,
        job: JobRecord,
        owner: str,
        attempts: int,
        error: JobError,
        *,
        in_doubt: bool,
        lookup_after: float | None = None,
        count_attempt: bool = False,
    ) -> None:
        if attempts >= self._settings.retry_max_attempts:
            await self._bury(job, owner, error, count_attempt=count_attempt)
            return
        delay = full_jitter(
            attempts,
            base=self._settings.retry_base_seconds,
            cap=self._settings.retry_cap_seconds,
            rng=self._rng,
        )
        await self._queue.retry_later(
            job.id,
            owner,
            error=error,
            available_at=self._clock() + delay,
            in_doubt=in_doubt,
            lookup_after=lookup_after,
            count_attempt=count_attempt,
        )
        self._count("retry")
        log.info(
            "job_retry",
            job_id=job.id,
            attempts=attempts,
            delay=round(delay, 3),
            code=error.code,
            in_doubt=in_doubt,
        )

    async def _bury(
        self, job: JobRecord, owner: str, error: JobError, *, count_attempt: bool = False
    ) -> None:
        if await self._queue.bury(
            job.id, owner, error=error, now=self._clock(), count_attempt=count_attempt
        ):
            self._count("dead")
            log.warning("job_dead", job_id=job.id, code=error.code, message=error.message)

    def _count(self, outcome: Outcome) -> None:
        self._metrics.jobs_submitted.labels(outcome).inc()
