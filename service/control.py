"""Operator actions on a job: cancel it (locally or at CI) and retry a dead one."""

from __future__ import annotations

import time

import structlog

from service.ci.errors import CIError
from service.queue import AT_CI_STATES, JobQueue, JobRecord
from service.ratelimit import RateLimiter
from service.submitter import BatchJobs, find_submission

log = structlog.get_logger(__name__)


class JobNotFound(LookupError):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job {job_id}")
        self.job_id = job_id


class JobStateConflict(Exception):
    """The action does not apply to the job in its current state."""

    def __init__(self, job: JobRecord, message: str) -> None:
        super().__init__(message)
        self.job = job
        self.message = message


async def cancel_job(
    queue: JobQueue, ci: BatchJobs, limiter: RateLimiter, job_id: str
) -> JobRecord:
    """Cancel a queued job locally, a submitted/running one through CI's cancel call.

    Raises JobNotFound, JobStateConflict (already ended), or the CI client's CIError.
    """
    job = await _load(queue, job_id)
    if job.state == "queued":
        before = await queue.cancel_queued(job_id, now=time.time())
        if before is not None:
            if before.in_doubt:
                await _cancel_in_doubt(queue, ci, limiter, before)
            log.info("job_cancelled", job_id=job_id, where="queue")
            return await _load(queue, job_id)
        job = await _load(queue, job_id)  # a worker submitted it meanwhile
    if job.state in AT_CI_STATES and job.ci_job_id:
        async with limiter.slot():
            await ci.cancel(job.bucket, job.region, job.ci_job_id)
        await queue.finish(job_id, "cancelled", at=time.time())
        log.info("job_cancelled", job_id=job_id, where="ci", ci_job_id=job.ci_job_id)
        return await _load(queue, job_id)
    raise JobStateConflict(
        job, f"job is {job.state}; only queued, submitted or running jobs can be cancelled"
    )


async def _cancel_in_doubt(
    queue: JobQueue, ci: BatchJobs, limiter: RateLimiter, job: JobRecord
) -> None:
    # An earlier attempt may have created the batch at CI. A create still in flight is caught by
    # its worker, which cancels at CI when it finds the job cancelled.
    try:
        async with limiter.slot():
            found = await find_submission(ci, job)
            if found is not None:
                await ci.cancel(job.bucket, job.region, found)
    except CIError as exc:
        log.warning("cancel_in_doubt_unresolved", job_id=job.id, code=exc.code, message=exc.message)
        return
    if found is not None:
        await queue.attach_ci_job(job.id, found)
        log.info("job_cancelled_at_ci", job_id=job.id, ci_job_id=found)


async def retry_job(queue: JobQueue, job_id: str) -> JobRecord:
    """Put a ``dead`` job back in the queue with a fresh attempt budget."""
    job = await queue.requeue_dead(job_id, now=time.time())
    if job is not None:
        log.info("job_requeued", job_id=job_id)
        return job
    current = await queue.get(job_id)
    if current is None:
        raise JobNotFound(job_id)
    raise JobStateConflict(current, f"job is {current.state}; only dead jobs can be retried")


async def _load(queue: JobQueue, job_id: str) -> JobRecord:
    job = await queue.get(job_id)
    if job is None:  # jobs are never deleted
        raise JobNotFound(job_id)
    return job
