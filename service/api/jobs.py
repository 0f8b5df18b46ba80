"""`/v1/jobs`: enqueue, read, list, cancel and retry batch jobs (JSON in and out)."""

from __future__ import annotations

from typing import Any

import structlog
from aiohttp import web

from service.api.deadline import body_deadline
from service.api.errors import ApiError
from service.api.params import decode_cursor, encode_cursor, parse_limit
from service.appkeys import (
    CI_CLIENT,
    EVENT_STORE,
    METRICS,
    QUEUE,
    RATE_LIMITER,
    SETTINGS,
    STORAGE,
    WEBHOOK_POLICY,
)
from service.ci.errors import CIError
from service.control import JobNotFound, JobStateConflict, cancel_job, retry_job
from service.intake import (
    UNSUPPORTED_MEDIA_TYPE,
    IntakeError,
    SubmissionTooLarge,
    check_idempotency_key,
    check_submission_size,
    enqueue,
    resolve_target,
    rule_errors,
    supported_media_type,
)
from service.queue import JOB_STATES, IdempotencyConflict, JobRecord
from service.request import RequestInvalid, parse_request
from service.storage import DELIVERY_STATES
from service.timefmt import epoch_text
from service.webhooks.intake import check_callback
from service.xmlsafe import DocumentError

log = structlog.get_logger(__name__)

routes = web.RouteTableDef()

DEFAULT_LIMIT = 50
EMBEDDED_EVENTS = 100  # events shown in a job's view; the rest through its feed
MAX_LIMIT = 200
_CURSOR_PREFIX = "v1:"
# CI statuses that refuse a cancel for the job's own sake (its state, or CI no longer has it).
_CI_JOB_REFUSALS = frozenset({400, 404, 409})


@routes.post("/v1/jobs")
async def create_job(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    try:
        target = resolve_target(settings, request.query.get("bucket"), request.query.get("region"))
        key = check_idempotency_key(request.headers.get("Idempotency-Key"))
    except IntakeError as exc:
        details = [{"path": exc.field, "message": exc.message}]
        raise ApiError(400, exc.code, exc.message, details) from None
    content_type = request.headers.get("Content-Type", "")
    if not supported_media_type(content_type):
        raise ApiError(415, "unsupported_media_type", UNSUPPORTED_MEDIA_TYPE)
    async with body_deadline(request):
        body = await request.read()  # over max_body_bytes: 413 from aiohttp, via the middleware
    try:
        batch = parse_request(body, content_type, max_depth=settings.max_xml_depth)
        await check_callback(batch, request.app[WEBHOOK_POLICY])
    except DocumentError as exc:
        raise ApiError(400, "invalid_document", exc.message, [{"reason": exc.reason}]) from None
    except RequestInvalid as exc:
        message, details = rule_errors(exc)
        raise ApiError(422, "invalid_request", message, details) from None
    except Exception as exc:  # parsing is pure: anything else it raises is the body's fault
        log.warning("request_unreadable", exc_info=True)
        message = f"the body could not be read: {type(exc).__name__}"
        raise ApiError(400, "invalid_document", message, [{"reason": "unreadable"}]) from None
    try:
        check_submission_size(settings, batch)
    except SubmissionTooLarge as exc:
        raise ApiError(422, "request_too_large", str(exc)) from None
    try:
        job, created = await enqueue(
            request.app[QUEUE],
            batch,
            target,
            via="http",
            idempotency_key=key,
            metrics=request.app[METRICS],
        )
    except IdempotencyConflict as exc:
        raise ApiError(
            409,
            "idempotency_conflict",
            "this Idempotency-Key was used for a different request",
            [{"job_id": exc.existing.id}],
        ) from None
    return web.json_response(
        job_view(job),
        status=202 if created else 200,
        headers={"Location": f"/v1/jobs/{job.id}"},
    )


@routes.get("/v1/jobs")
async def list_jobs(request: web.Request) -> web.Response:
    states = _states(request.query.get("state", ""))
    limit = parse_limit(request.query.get("limit"), default=DEFAULT_LIMIT, maximum=MAX_LIMIT)
    before = (
        decode_cursor(
            _CURSOR_PREFIX, request.query["cursor"], parameter="cursor", code="invalid_cursor"
        )
        if "cursor" in request.query
        else None
    )
    jobs = await request.app[QUEUE].list_jobs(states=states, limit=limit + 1, before_seq=before)
    page, more = jobs[:limit], len(jobs) > limit
    return web.json_response(
        {
            "jobs": [job_view(job, with_events=False) for job in page],
            "next_cursor": encode_cursor(_CURSOR_PREFIX, page[-1].seq) if more else None,
        }
    )


@routes.get("/v1/jobs/{id}")
async def get_job(request: web.Request) -> web.Response:
    job = await request.app[QUEUE].get(request.match_info["id"])
    if job is None:
        raise _not_found(request.match_info["id"])
    view = job_view(job)
    store = request.app[EVENT_STORE]
    # Bounded: a batch of 100,000 media jobs has as many events; the feed pages through them.
    view["events"] = await store.for_job(job.id, limit=EMBEDDED_EVENTS)
    view["events_count"] = await store.count_for_job(job.id)
    view["deliveries"] = await request.app[STORAGE].deliveries.job_counts(job.id)
    return web.json_response(view)


@routes.post("/v1/jobs/{id}/cancel")
async def cancel(request: web.Request) -> web.Response:
    app, job_id = request.app, request.match_info["id"]
    try:
        job = await cancel_job(app[QUEUE], app[CI_CLIENT], app[RATE_LIMITER], job_id)
    except JobNotFound as exc:
        raise _not_found(exc.job_id) from None
    except JobStateConflict as exc:
        details = [{"state": exc.job.state}]
        raise ApiError(409, "job_not_cancellable", exc.message, details) from None
    except CIError as exc:
        ci_details: list[dict[str, Any]] = [
            {"status": exc.status, "code": exc.code, "message": exc.message}
        ]
        if exc.status in _CI_JOB_REFUSALS:
            # The job ended at CI before its event reached us: a state conflict like any ended
            # job's, not a failure on our side or CI's.
            raise ApiError(
                409, "job_not_cancellable", "CI refused to cancel the job", ci_details
            ) from None
        raise ApiError(502, "ci_error", "CI failed the cancel call", ci_details) from None
    return web.json_response(job_view(job))


@routes.post("/v1/jobs/{id}/retry")
async def retry(request: web.Request) -> web.Response:
    try:
        job = await retry_job(request.app[QUEUE], request.match_info["id"])
    except JobNotFound as exc:
        raise _not_found(exc.job_id) from None
    except JobStateConflict as exc:
        raise ApiError(409, "job_not_retryable", exc.message, [{"state": exc.job.state}]) from None
    return web.json_response(job_view(job))


def job_view(job: JobRecord, *, with_events: bool = True) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": job.id,
        "state": job.state,
        "bucket": job.bucket,
        "region": job.region,
        "tag": job.tag,
        "job_level": job.job_level,
        "request": job.request,
        "ci_name": job.submit_name,
        "ci_job_id": job.ci_job_id,
        "attempts": job.attempts,
        "last_error": job.last_error.as_dict() if job.last_error else None,
        "created_at": epoch_text(job.created_at),
        "submitted_at": epoch_text(job.submitted_at),
        "finished_at": epoch_text(job.finished_at),
    }
    if with_events:
        view["events"] = []
        view["events_count"] = 0
        view["events_feed"] = f"/v1/events?job_id={job.id}"
        view["deliveries"] = dict.fromkeys(DELIVERY_STATES, 0)
    return view


def _not_found(job_id: str) -> ApiError:
    return ApiError(404, "job_not_found", f"no job {job_id}")


def _states(raw: str) -> list[str]:
    states = [s for s in (part.strip() for part in raw.split(",")) if s]
    unknown = [s for s in states if s not in JOB_STATES]
    if unknown:
        raise ApiError(
            400,
            "invalid_parameter",
            f"unknown state(s) {', '.join(unknown)}; expected some of {', '.join(JOB_STATES)}",
            [{"path": "query.state", "message": "unknown state"}],
        )
    return states
