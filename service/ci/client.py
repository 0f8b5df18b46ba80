"""Async client for CI batch jobs and the media jobs they spawn.

Every request is signed (COS v5) and bounded by a timeout; failures surface as
``service.ci.errors`` exceptions. The client never retries: create is not idempotent, so that
decision belongs to the caller, which sees ``in_doubt`` on failures that may have reached CI.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import quote

import aiohttp
import structlog
from yarl import URL

from service import __version__
from service.ci.errors import (
    CIError,
    CIMalformedResponse,
    CIPermanentError,
    CITransportError,
    error_from_response,
)
from service.ci.signing import Credentials, sign
from service.ci.xml import BatchJob, BatchJobPage, MediaJobPage, parse_batch_jobs, parse_media_jobs
from service.metrics import Metrics
from service.xmlsafe import DocumentError

log = structlog.get_logger(__name__)

T = TypeVar("T")

_BUCKET = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_REGION = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
# Job ids are embedded in the path; URL-unreserved characters keep them from changing its shape.
_JOB_ID = re.compile(r"[A-Za-z0-9._~-]{1,128}")
_STATES = frozenset({"All", "Submitted", "Running", "Success", "Failed", "Pause", "Cancel"})
_ORDERS = frozenset({"Desc", "Asc"})
_MAX_PAGE = 100
_MAX_BODY = 16 * 1024 * 1024  # far above any documented answer; bounds memory on a bad peer


@dataclass(frozen=True)
class _Answer:
    status: int
    body: bytes
    request_id: str


class CIClient:
    """One per process, sharing the app's pooled ``aiohttp.ClientSession``."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        credentials: Credentials,
        *,
        endpoint: str = "",
        timeout: float = 10.0,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._session = session
        self._credentials = credentials
        self._origin = _origin(endpoint) if endpoint else ""
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._metrics = metrics
        self._clock = clock

    async def create(self, bucket: str, region: str, request_xml: bytes) -> BatchJob:
        """``POST /inventorytriggerjob``: submit a batch job and return it as CI recorded it."""
        if not request_xml.strip():
            raise ValueError("request_xml is empty")
        answer = await self._exchange(
            "create", "POST", bucket, region, "/inventorytriggerjob", body=request_xml
        )
        page = self._parse("create", answer, parse_batch_jobs)
        if len(page.jobs) != 1 or not page.jobs[0].job_id:
            raise self._malformed("create", answer, "answer does not carry exactly one JobId")
        return page.jobs[0]

    async def get(self, bucket: str, region: str, job_id: str) -> BatchJob | None:
        """``GET /inventorytriggerjob/<id>``; ``None`` when CI says the job does not exist."""
        _check_job_id(job_id)
        try:
            answer = await self._exchange(
                "get", "GET", bucket, region, f"/inventorytriggerjob/{job_id}"
            )
        except CIPermanentError as exc:
            if exc.status == 404 and exc.code == "ResourceNotFound":
                return None
            raise
        page = self._parse("get", answer, parse_batch_jobs)
        for job in page.jobs:
            if job.job_id == job_id:
                return job
        if job_id in page.non_exist_job_ids:
            return None
        # Saying "gone" on an answer that does not say so could make a caller submit twice.
        raise self._malformed("get", answer, f"answer neither describes nor disowns {job_id}")

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
        order_by_time: str = "Desc",
        start_creation_time: str = "",
        end_creation_time: str = "",
        workflow_id: str = "",
        job_id: str = "",
    ) -> BatchJobPage:
        """``GET /inventorytriggerjob`` with the given filters; ``type=Job`` unless asked.

        The SDK defaults to ``type=Workflow``, which hides Job-type batches.
        """
        if type not in ("Job", "Workflow"):
            raise ValueError(f"type must be Job or Workflow, not {type!r}")
        params = {"type": type, **_paging(states, size, next_token, order_by_time)}
        params.update(
            _set(
                name=name,
                startCreationTime=start_creation_time,
                endCreationTime=end_creation_time,
                workflowId=workflow_id,
                jobId=job_id,
            )
        )
        answer = await self._exchange(
            "list", "GET", bucket, region, "/inventorytriggerjob", params=params
        )
        return self._parse("list", answer, parse_batch_jobs)

    async def cancel(self, bucket: str, region: str, job_id: str) -> None:
        """``PUT /inventorytriggerjob/<id>?cancel``."""
        _check_job_id(job_id)
        await self._exchange(
            "cancel", "PUT", bucket, region, f"/inventorytriggerjob/{job_id}", subresource="cancel"
        )

    async def get_media_jobs(
        self, bucket: str, region: str, job_ids: Sequence[str]
    ) -> MediaJobPage:
        """``GET /jobs/<id>[,<id>…]``: the media jobs, and the ids CI does not know."""
        if not job_ids:
            raise ValueError("job_ids is empty")
        for job_id in job_ids:
            _check_job_id(job_id)
        answer = await self._exchange(
            "get_media_jobs", "GET", bucket, region, "/jobs/" + ",".join(job_ids)
        )
        return self._parse("get_media_jobs", answer, parse_media_jobs)

    async def list_media_jobs(
        self,
        bucket: str,
        region: str,
        *,
        tag: str,
        inventory_trigger_job_id: str = "",
        queue_id: str = "",
        states: Sequence[str] = (),
        size: int = 10,
        next_token: str = "",
        order_by_time: str = "Desc",
        start_creation_time: str = "",
        end_creation_time: str = "",
    ) -> MediaJobPage:
        """``GET /jobs`` for one tag, e.g. the children of one batch job."""
        if not tag:
            raise ValueError("tag is required")
        params = {"tag": tag, **_paging(states, size, next_token, order_by_time)}
        params.update(
            _set(
                inventoryTriggerJobId=inventory_trigger_job_id,
                queueId=queue_id,
                startCreationTime=start_creation_time,
                endCreationTime=end_creation_time,
            )
        )
        answer = await self._exchange(
            "list_media_jobs", "GET", bucket, region, "/jobs", params=params
        )
        return self._parse("list_media_jobs", answer, parse_media_jobs)

    async def cancel_media_job(self, bucket: str, region: str, job_id: str) -> None:
        """``PUT /jobs/<id>?cancel``."""
        _check_job_id(job_id)
        await self._exchange(
            "cancel_media_job", "PUT", bucket, region, f"/jobs/{job_id}", subresource="cancel"
        )

    async def _exchange(
        self,
        operation: str,
        method: str,
        bucket: str,
        region: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        subresource: str = "",
        body: bytes = b"",
    ) -> _Answer:
        host = _host(bucket, region)
        url = self._url(host, path, params or {}, subresource)
        headers = self._signed_headers(method, host, path, params or {}, body)
        started = time.perf_counter()
        status_label = "error"
        try:
            async with self._session.request(
                method,
                url,
                headers=headers,
                data=body or None,
                timeout=self._timeout,
                allow_redirects=False,
                raise_for_status=False,
            ) as resp:
                status = resp.status
                status_label = str(status)
                payload = await _read_limited(resp)
                request_id = resp.headers.get("x-ci-request-id", "")
                if not 200 <= status < 300:
                    raise error_from_response(status, payload, resp.headers)
        except CIError as exc:
            self._failed(operation, exc)
            raise
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            # Refused before a byte was sent: CI cannot have seen the request.
            status_label = "error"
            raise self._transport(operation, "ConnectFailed", exc, in_doubt=False) from exc
        except TimeoutError as exc:
            # A total timeout can also fire while connecting; "in doubt" is the safe reading.
            status_label = "error"
            raise self._transport(operation, "Timeout", exc, in_doubt=True) from exc
        except aiohttp.ClientError as exc:
            status_label = "error"
            raise self._transport(operation, "ConnectionError", exc, in_doubt=True) from exc
        finally:
            if self._metrics is not None:
                self._metrics.ci_requests.labels(operation, status_label).inc()
                self._metrics.ci_request_duration.labels(operation).observe(
                    time.perf_counter() - started
                )
        log.debug("ci_request", operation=operation, status=status, request_id=request_id)
        return _Answer(status, payload, request_id)

    def _url(self, host: str, path: str, params: Mapping[str, str], subresource: str) -> URL:
        # Encoded here rather than by yarl so the bytes on the wire are exactly what was signed.
        query = "&".join(f"{_quote(key)}={_quote(value)}" for key, value in params.items())
        if subresource:
            query = f"{query}&{subresource}" if query else subresource
        origin = self._origin or f"https://{host}"
        target = origin + quote(path, safe="/-_.~")
        return URL(f"{target}?{query}" if query else target, encoded=True)

    def _signed_headers(
        self, method: str, host: str, path: str, params: Mapping[str, str], body: bytes
    ) -> dict[str, str]:
        # Host is the CI virtual host even when the endpoint is an address, so that an emulator
        # can route by bucket; it is signed either way.
        headers = {"Host": host, "User-Agent": f"cirelay/{__version__}"}
        if method in ("POST", "PUT"):
            headers["Content-Length"] = str(len(body))
        if body:
            headers["Content-Type"] = "application/xml"
            headers["Content-MD5"] = base64.b64encode(hashlib.md5(body).digest()).decode()
        if self._credentials.token:
            headers["x-ci-security-token"] = self._credentials.token
        headers["Authorization"] = sign(
            self._credentials, method, path, params, headers, now=int(self._clock())
        )
        return headers

    def _parse(self, operation: str, answer: _Answer, parser: Callable[[bytes], T]) -> T:
        try:
            return parser(answer.body)
        except DocumentError as exc:
            raise self._malformed(operation, answer, exc.message) from None

    def _malformed(self, operation: str, answer: _Answer, message: str) -> CIMalformedResponse:
        # CI answered 2xx, so it acted on the request: a create may well have made a job.
        exc = CIMalformedResponse(
            answer.status,
            "MalformedResponse",
            message,
            request_id=answer.request_id,
            in_doubt=True,
        )
        self._failed(operation, exc)
        return exc

    def _transport(
        self, operation: str, code: str, cause: BaseException, *, in_doubt: bool
    ) -> CITransportError:
        exc = CITransportError(0, code, str(cause) or type(cause).__name__, in_doubt=in_doubt)
        self._failed(operation, exc)
        return exc

    def _failed(self, operation: str, exc: CIError) -> None:
        if exc.throttled and self._metrics is not None:
            self._metrics.ci_throttled.inc()
        log.warning(
            "ci_request_failed",
            operation=operation,
            status=exc.status,
            code=exc.code,
            message=exc.message,
            request_id=exc.request_id,
            retryable=exc.retryable,
            throttled=exc.throttled,
            in_doubt=exc.in_doubt,
        )


def _origin(endpoint: str) -> str:
    url = URL(endpoint)
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"CI endpoint must be an http(s) URL, not {endpoint!r}")
    if url.path not in ("", "/") or url.query_string or url.fragment:
        raise ValueError(f"CI endpoint must not carry a path or query: {endpoint!r}")
    return str(url.origin())


def _host(bucket: str, region: str) -> str:
    if not _BUCKET.fullmatch(bucket):
        raise ValueError(f"invalid bucket {bucket!r}")
    if not _REGION.fullmatch(region):
        raise ValueError(f"invalid region {region!r}")
    return f"{bucket}.ci.{region}.myqcloud.com"


def _check_job_id(job_id: str) -> None:
    if not _JOB_ID.fullmatch(job_id):
        raise ValueError(f"invalid job id {job_id!r}")


def _paging(
    states: Sequence[str], size: int, next_token: str, order_by_time: str
) -> dict[str, str]:
    unknown = [state for state in states if state not in _STATES]
    if unknown:
        raise ValueError(f"unknown states {unknown}; expected some of {sorted(_STATES)}")
    if not 1 <= size <= _MAX_PAGE:
        raise ValueError(f"size must be 1..{_MAX_PAGE}, not {size}")
    if order_by_time not in _ORDERS:
        raise ValueError(f"order_by_time must be Desc or Asc, not {order_by_time!r}")
    params = {"size": str(size), "orderByTime": order_by_time}
    params.update(_set(states=",".join(states), nextToken=next_token))
    return params


def _set(**params: str) -> dict[str, str]:
    return {key: value for key, value in params.items() if value}


def _quote(text: str) -> str:
    return quote(text, safe="-_.~")


async def _read_limited(resp: aiohttp.ClientResponse) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > _MAX_BODY:
            raise CIMalformedResponse(
                resp.status,
                "ResponseTooLarge",
                f"answer exceeds {_MAX_BODY} bytes",
                request_id=resp.headers.get("x-ci-request-id", ""),
                in_doubt=True,
            )
        chunks.append(chunk)
    return b"".join(chunks)
