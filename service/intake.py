"""Enqueueing a validated batch request: target → idempotency → insert.

Shared by the HTTP API (``POST /v1/jobs``) and the Pulsar intake topic, so both give the same
guarantees: a job is stored durably (committed) before the caller hears "accepted", and an
idempotency key never yields a second job.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from dataclasses import dataclass

import structlog

from service.metrics import Metrics
from service.queue import JobQueue, JobRecord, NewJob, Via
from service.request import BatchRequest, RequestInvalid
from service.request.model import TAGS
from service.settings import Settings, env_name
from service.submitter import request_xml

log = structlog.get_logger(__name__)

# CI's limit on a batch job's Name, and the suffix that makes a submission's Name unique.
NAME_LIMIT = 128
SUFFIX_LENGTH = 16
IDEMPOTENCY_KEY_LIMIT = 200
# A Request's errors reported to its sender (422 details, dead-letter property): the first this
# many, so that a pathological body cannot make an answer many times its own size.
REPORTED_ERRORS = 100
UNSUPPORTED_MEDIA_TYPE = "send the Request as application/json or application/xml"
# CI refuses a request body larger than this (EntityTooLarge).
CI_BODY_LIMIT = 1_048_576

# The same shapes the CI client accepts when it builds `<bucket>.ci.<region>.myqcloud.com`.
_BUCKET = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_REGION = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
_PRINTABLE = re.compile(r"[\x21-\x7e]+")


class IntakeError(ValueError):
    """A problem with how a job was addressed (target, idempotency key), not with its body."""

    def __init__(self, code: str, field: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.field = field
        self.message = message


class SubmissionTooLarge(ValueError):
    """The Request's XML form, as it would be sent to CI, is over CI's body limit."""


def check_submission_size(settings: Settings, request: BatchRequest) -> None:
    """Refuse now a Request that CI would refuse as EntityTooLarge after it was accepted."""
    # Any job id gives a Name and a callback token of the same length as the real ones.
    job_id = "0" * len(new_job_id())
    xml = request_xml(settings, request.to_tree(), job_id, submission_name(request.name, job_id))
    if len(xml) > CI_BODY_LIMIT:
        raise SubmissionTooLarge(
            f"the Request's XML form is {len(xml)} bytes; CI takes at most {CI_BODY_LIMIT}"
        )


def supported_media_type(content_type: str) -> bool:
    """A Request's Content-Type names JSON or XML, or is absent (the body is then sniffed)."""
    return not content_type or any(kind in content_type.lower() for kind in ("json", "xml"))


def rule_errors(exc: RequestInvalid) -> tuple[str, list[dict[str, str]]]:
    """What a sender is told of a Request that breaks CI's rules: a message with the count, and
    the first ``REPORTED_ERRORS`` errors with their node paths."""
    count = len(exc.errors)
    shown = "" if count <= REPORTED_ERRORS else f"; the first {REPORTED_ERRORS} are listed"
    details = [error.as_dict() for error in exc.errors[:REPORTED_ERRORS]]
    return f"the Request breaks {count} rule(s){shown}", details


@dataclass(frozen=True)
class Target:
    bucket: str
    region: str


def resolve_target(settings: Settings, bucket: str | None, region: str | None) -> Target:
    """The job's (bucket, region): as given, else the configured defaults."""
    chosen = Target(bucket or settings.ci_bucket, region or settings.ci_region)
    for name, value, pattern, setting in (
        ("bucket", chosen.bucket, _BUCKET, "ci_bucket"),
        ("region", chosen.region, _REGION, "ci_region"),
    ):
        if not value:
            raise IntakeError(
                "missing_target", name, f"no {name} given and {env_name(setting)} is not set"
            )
        if not pattern.fullmatch(value):
            raise IntakeError("invalid_target", name, f"{name} {value!r} is not a valid CI {name}")
    return chosen


def check_idempotency_key(key: str | None) -> str | None:
    if key is None:
        return None
    if not _PRINTABLE.fullmatch(key) or len(key) > IDEMPOTENCY_KEY_LIMIT:
        raise IntakeError(
            "invalid_idempotency_key",
            "Idempotency-Key",
            f"must be 1-{IDEMPOTENCY_KEY_LIMIT} printable ASCII characters without spaces",
        )
    return key


def new_job_id() -> str:
    return uuid.uuid4().hex


def submission_name(name: str, job_id: str) -> str:
    """The Name a job carries at CI, unique to that job so CI's list call can find it.

    Scheme: the Request's Name cut to ``128 - 17`` = 111 characters, then ``-``, then the first
    16 hex digits of SHA-256 of the cirelay job id. Example: Name ``demo`` of job
    ``5f0c2a9e8b6d4e1fa3c7b9d2e4f60718`` is sent to CI as ``demo-029e6775057dffec``. The result
    keeps CI's rule for Names (at most 128 letters, digits, ``-`` and ``_``) because the Request's
    Name already obeys it. 64 bits of suffix make two jobs sharing a Name practically impossible;
    lookups compare the full Name and search only the job's own bucket.
    """
    suffix = hashlib.sha256(job_id.encode()).hexdigest()[:SUFFIX_LENGTH]
    return f"{name[: NAME_LIMIT - 1 - SUFFIX_LENGTH]}-{suffix}"


def fingerprint(request: BatchRequest, target: Target) -> str:
    """What an idempotency key stands for: the canonical request and where it goes, so the same
    job sent once as JSON and once as XML counts as the same body."""
    canonical = json.dumps(
        {"bucket": target.bucket, "region": target.region, "request": request.to_tree()},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


async def enqueue(
    queue: JobQueue,
    request: BatchRequest,
    target: Target,
    *,
    via: Via,
    idempotency_key: str | None = None,
    metrics: Metrics | None = None,
    now: float | None = None,
) -> tuple[JobRecord, bool]:
    """Store the job; (job, True) when new, (the existing job, False) for a repeated key.

    Raises ``service.queue.IdempotencyConflict`` when the key was used for another body.
    """
    job_id = new_job_id()
    job = NewJob(
        id=job_id,
        bucket=target.bucket,
        region=target.region,
        tag=request.tag,
        job_level=request.job_level,
        request=request.to_tree(),
        submit_name=submission_name(request.name, job_id),
        caller_callback=request.operation.callback or "",
        via=via,
        idempotency_key=idempotency_key,
        fingerprint=fingerprint(request, target) if idempotency_key is not None else None,
    )
    record, created = await queue.enqueue(job, now=time.time() if now is None else now)
    if created:
        if metrics is not None:
            metrics.jobs_enqueued.labels(record.tag, via).inc()
        log.info(
            "job_enqueued", job_id=record.id, tag=record.tag, job_level=record.job_level, via=via
        )
    return record, created


def preinitialise_metrics(metrics: Metrics) -> None:
    for tag in TAGS:
        for via in ("http", "pulsar"):
            metrics.jobs_enqueued.labels(tag, via)
