"""Batch jobs from ``CIRELAY_PULSAR_INTAKE_TOPIC``: the same body as ``POST /v1/jobs``.

Message properties stand for the HTTP request's other parts: ``idempotency-key``, ``bucket``,
``region`` and ``content-type``. A valid job is acknowledged once it is queued (committed); an
invalid one is published to ``<topic>-DLQ`` with the errors (``cirelay-reason``,
``cirelay-message``, and ``cirelay-errors`` as a JSON list like the API's ``details``) and then
acknowledged; a transient failure (the database) is negatively acknowledged for redelivery.

A message without an ``idempotency-key`` gets one derived from its topic and message id, so a
redelivery (say, after a crash between enqueue and ack) finds the job it already created.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import pulsar
import pulsar.asyncio
import structlog

from service.intake import (
    UNSUPPORTED_MEDIA_TYPE,
    IntakeError,
    Target,
    check_idempotency_key,
    enqueue,
    resolve_target,
    rule_errors,
    supported_media_type,
)
from service.metrics import Metrics
from service.pulsar.deadletter import DeadLetters
from service.pulsar.messages import Outcomes, Redelivery, acknowledge, property_value
from service.queue import IdempotencyConflict, JobQueue
from service.request import BatchRequest, RequestInvalid, parse_request
from service.settings import Settings
from service.xmlsafe import DocumentError

log = structlog.get_logger(__name__)

ERRORS = "cirelay-errors"  # dead-letter property: JSON list of {path|reason, message}


class InvalidJob(Exception):
    """Why a message can never become a job: a code as the API's, a message, the details."""

    def __init__(self, code: str, message: str, errors: list[dict[str, str]]) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.errors = errors


@dataclass(frozen=True)
class JobMessage:
    request: BatchRequest
    target: Target
    idempotency_key: str


def read_job(
    body: bytes, properties: dict[str, str], message_ref: str, settings: Settings
) -> JobMessage:
    """Validate one intake message as ``POST /v1/jobs`` validates a request; raise ``InvalidJob``.

    ``message_ref`` (topic and message id) names the message when it carries no idempotency key.
    """
    try:
        target = resolve_target(
            settings, property_value(properties, "bucket"), property_value(properties, "region")
        )
        given = check_idempotency_key(property_value(properties, "idempotency-key"))
    except IntakeError as exc:
        details = [{"path": exc.field, "message": exc.message}]
        raise InvalidJob(exc.code, exc.message, details) from None
    content_type = property_value(properties, "content-type") or ""
    if not supported_media_type(content_type):
        raise InvalidJob("unsupported_media_type", UNSUPPORTED_MEDIA_TYPE, [])
    if len(body) > settings.max_body_bytes:
        message = f"message body exceeds {settings.max_body_bytes} bytes"
        raise InvalidJob("body_too_large", message, [])
    try:
        request = parse_request(body, content_type, max_depth=settings.max_xml_depth)
    except DocumentError as exc:
        raise InvalidJob(
            "invalid_document", exc.message, [{"reason": exc.reason, "message": exc.message}]
        ) from None
    except RequestInvalid as exc:
        raise InvalidJob("invalid_request", *rule_errors(exc)) from None
    key = given or "pulsar-" + hashlib.sha256(message_ref.encode()).hexdigest()[:32]
    return JobMessage(request, target, key)


class JobIntake:
    def __init__(
        self,
        client: Any,
        queue: JobQueue,
        dead_letters: DeadLetters,
        settings: Settings,
        metrics: Metrics,
    ) -> None:
        self._client = client
        self._queue = queue
        self._dead_letters = dead_letters
        self._settings = settings
        self._metrics = metrics
        self._outcomes = Outcomes(metrics, "intake")
        self._redelivery = Redelivery("intake", self._outcomes)

    async def subscribe(self) -> Any:
        settings = self._settings
        return await self._client.subscribe(
            settings.pulsar_intake_topic,
            settings.pulsar_subscription,
            # Any replica may enqueue any job: one shared subscription for all of them.
            consumer_type=pulsar.ConsumerType.Shared,
            receiver_queue_size=settings.pulsar_receiver_queue_size,
            negative_ack_redelivery_delay_ms=int(settings.pulsar_redelivery_delay_seconds * 1000),
            initial_position=pulsar.InitialPosition.Earliest,
        )

    async def handle(self, consumer: Any, message: Any) -> None:
        ref = f"{message.topic_name()}|{message.message_id()}"
        try:
            job = read_job(message.data(), message.properties(), ref, self._settings)
        except InvalidJob as exc:
            await self._dead_letter(consumer, message, exc)
            return
        except Exception as exc:
            # Reading a message is pure: anything else it raises is the message's fault too, and
            # a redelivery would raise it again, forever.
            log.warning("pulsar_job_unreadable", exc_info=True)
            text = f"the message could not be read: {type(exc).__name__}"
            invalid = InvalidJob(
                "invalid_document", text, [{"reason": "unreadable", "message": text}]
            )
            await self._dead_letter(consumer, message, invalid)
            return
        try:
            record, created = await enqueue(
                self._queue,
                job.request,
                job.target,
                via="pulsar",
                idempotency_key=job.idempotency_key,
                metrics=self._metrics,
            )
        except IdempotencyConflict as exc:
            invalid = InvalidJob(
                "idempotency_conflict",
                "this idempotency-key was used for a different request",
                [{"path": "idempotency-key", "message": f"used by job {exc.existing.id}"}],
            )
            await self._dead_letter(consumer, message, invalid)
            return
        except Exception as exc:  # the database: the job is fine, try again later
            await self._redelivery.later(consumer, message, exc)
            return
        self._redelivery.succeeded()
        log.info("pulsar_job_accepted", job_id=record.id, created=created)
        await acknowledge(consumer, message)
        self._outcomes.acked.inc()

    async def _dead_letter(self, consumer: Any, message: Any, invalid: InvalidJob) -> None:
        try:
            await self._dead_letters.publish(
                message,
                invalid.code,
                invalid.message,
                extra={ERRORS: json.dumps(invalid.errors, ensure_ascii=False)},
            )
        except pulsar.asyncio.PulsarException as exc:
            await self._redelivery.later(consumer, message, exc)
            return
        log.info("pulsar_job_refused", code=invalid.code, errors=len(invalid.errors))
        await acknowledge(consumer, message)
        self._outcomes.dead_lettered.inc()
