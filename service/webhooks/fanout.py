"""Fan-out: each stored event becomes the deliveries it owes, in feed order.

The event log is the durable queue: fan-out follows the feed with a position kept in the same
transaction as the deliveries it inserts, so an event committed just before a crash is fanned out
after the restart, and fanning out a stretch twice (a lease that ran out) inserts nothing twice
(delivery ids are derived from event, kind and URL). One replica at a time holds the
``webhook-fanout`` lease; the deliveries themselves are sent by every replica.

What each event owes:

- every subscription (``CIRELAY_WEBHOOK_URLS``) gets the canonical event as JSON;
- the job's own CallBack gets what CI would have sent there: the body of CI's callback, kept byte
  for byte by ``CallbackBodies`` before the event was stored, or, for a TaskFinish rebuilt by
  polling, that callback rendered from CI's job query in the job's ``CallBackFormat``. Events
  that CI sent elsewhere (TDMQ) or never sends (BatchFinish) owe it nothing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import orjson
import structlog

from service.identity import process_owner
from service.queue import JobQueue, JobRecord
from service.queue.signal import Signal
from service.storage import Deliveries, EventLog, Leases, NewDelivery
from service.webhooks.ssrf import origin_of
from service.xmlsafe import unparse_xml

log = structlog.get_logger(__name__)

LEASE = "webhook-fanout"
_PAGE = 500
_JOB_CACHE_SIZE = 4096
# The fan-out lease lasts this many intervals and is renewed every interval: a replica that died
# holding it (kill -9) holds up fan-out elsewhere for a few seconds only.
_LEASE_INTERVALS = 5


def caller_callback(job: JobRecord) -> str | None:
    """The URL the job's Request named as its CallBack, or None (none, ``no``, or TDMQ)."""
    operation = job.request.get("Operation", {})
    url = job.caller_callback
    if not url or url == "no" or operation.get("CallBackType") == "TDMQ":
        return None
    return url


def callback_format(job: JobRecord) -> str:
    """``XML`` (CI's default) or ``JSON``."""
    return "JSON" if job.request.get("Operation", {}).get("CallBackFormat") == "JSON" else "XML"


def render_task_finish(event: Mapping[str, Any], fmt: str) -> tuple[str, bytes]:
    """(Content-Type, body) of the TaskFinish callback CI would have sent for a polled event."""
    details = event["document"].get("JobsDetail")
    detail = details[0] if isinstance(details, list) else details
    if fmt == "JSON":
        body = {"EventName": "TaskFinish", "JobsDetail": [detail]}
        return "application/json", json.dumps(body, ensure_ascii=False).encode()
    tree = {"Response": {"EventName": "TaskFinish", "JobsDetail": detail}}
    return "application/xml", unparse_xml(tree)


def delivery_id(event_id: str, kind: str, url: str) -> str:
    """The ``webhook-id``: the same for the same event, kind and destination, whoever fans out."""
    digest = hashlib.sha256(f"{kind}\n{url}\n{event_id}".encode()).hexdigest()
    return f"msg_{digest[:32]}"


class JobCallbacks:
    """Which of our jobs have a CallBack of their own (cached: a job's Request never changes)."""

    def __init__(self, queue: JobQueue) -> None:
        self._queue = queue
        self._known: dict[str, tuple[str, str] | None] = {}

    async def of(self, job_id: str) -> tuple[str, str] | None:
        """(URL, format) of the job's own CallBack, or None."""
        if job_id in self._known:
            return self._known[job_id]
        job = await self._queue.get(job_id)
        if job is None:
            return None
        url = caller_callback(job)
        found = None if url is None else (url, callback_format(job))
        self._known[job_id] = found
        if len(self._known) > _JOB_CACHE_SIZE:
            del self._known[next(iter(self._known))]
        return found


class CallbackBodies:
    """Keeps the body of a callback CI sent for a job with a CallBack of its own, so that the
    job's CallBack receives exactly those bytes. Called before the callback's events are stored:
    a body is never missing for an event that is."""

    def __init__(self, deliveries: Deliveries, callbacks: JobCallbacks) -> None:
        self._deliveries = deliveries
        self._callbacks = callbacks

    async def keep(
        self, job_id: str, event_id: str, content_type: str, body: bytes, *, now: float
    ) -> None:
        if await self._callbacks.of(job_id) is not None:
            await self._deliveries.keep_body(event_id, content_type, body, now=now)


class FanOut:
    def __init__(
        self,
        events: EventLog,
        deliveries: Deliveries,
        leases: Leases,
        callbacks: JobCallbacks,
        *,
        subscriptions: Sequence[str],
        callbacks_enabled: bool,
        interval: float,
        clock: Callable[[], float],
        on_new: Callable[[], None] = lambda: None,
    ) -> None:
        self._events = events
        self._deliveries = deliveries
        self._leases = leases
        self._callbacks = callbacks
        self._subscriptions = tuple(subscriptions)
        self._callbacks_enabled = callbacks_enabled
        self._interval = interval
        self._clock = clock
        self._on_new = on_new
        self._owner = process_owner()
        self.wake = Signal()

    async def run(self) -> None:
        """Fan out whenever events may have been stored (this process's pipeline says so, or
        every ``interval`` for other replicas' events), while holding the lease."""
        while True:
            try:
                # Renewed before every page: a long backlog never outlasts the lease.
                while await self._hold() and await self.run_once() == _PAGE:
                    pass
            except Exception:  # the database went away: try again on the next round
                log.exception("webhook_fanout_failed")
            await self.wake.wait(self._interval)

    async def _hold(self) -> bool:
        ttl = _LEASE_INTERVALS * self._interval
        return await self._leases.acquire(LEASE, self._owner, ttl=ttl, now=self._clock())

    async def run_once(self) -> int:
        """Fan out one page of the feed; the number of events it held."""
        now = self._clock()
        position, since = await self._deliveries.fanout_position(now=now)
        page = await self._events.feed(after=position, limit=_PAGE)
        if not page:
            return 0
        events = [
            event
            for _, event in page
            if datetime.fromisoformat(event["received_at"]).timestamp() >= since
        ]
        kept = await self._deliveries.bodies(
            e["event_id"] for e in events if e["source"] == "http" and e.get("cirelay_job_id")
        )
        rows: list[NewDelivery] = []
        for event in events:
            for url in self._subscriptions:
                rows.append(subscription_delivery(event, url))
            rows.extend(await self._callback(event, kept))
        await self._deliveries.fan_out(rows, page[-1][0], now=now)
        if rows:
            log.debug("webhook_fanout", events=len(page), deliveries=len(rows))
            self._on_new()
        return len(page)

    async def _callback(
        self, event: Mapping[str, Any], kept: Mapping[str, tuple[str, bytes]]
    ) -> list[NewDelivery]:
        job_id = event.get("cirelay_job_id")
        if not job_id or not self._callbacks_enabled:
            return []
        callback = await self._callbacks.of(job_id)
        if callback is None:
            return []
        url, fmt = callback
        if event["event_id"] in kept:
            content_type, body = kept[event["event_id"]]
        elif event["source"] == "poll" and event["event_type"] == "TaskFinish":
            content_type, body = render_task_finish(event, fmt)
        else:
            return []
        return [_row(event, "callback", url, content_type, body)]


def subscription_delivery(event: Mapping[str, Any], url: str) -> NewDelivery:
    """The delivery of ``event`` to the subscription ``url``: the canonical event as JSON."""
    return _row(event, "subscription", url, "application/json", _json(event))


def _row(
    event: Mapping[str, Any], kind: str, url: str, content_type: str, body: bytes
) -> NewDelivery:
    job = event.get("cirelay_job_id") or event.get("job_id") or event["event_id"]
    return NewDelivery(
        id=delivery_id(event["event_id"], kind, url),
        job_id=event.get("cirelay_job_id"),
        event_id=event["event_id"],
        event_type=event["event_type"],
        kind=kind,
        url=url,
        origin=origin_of(url),
        chain=f"{kind} {url} {job}",
        content_type=content_type,
        body=body,
    )


def _json(event: Mapping[str, Any]) -> bytes:
    try:
        return orjson.dumps(event)
    except orjson.JSONEncodeError:  # integers beyond 64 bits in a hostile ``document``
        return json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode()
