"""Typed CI failures and their classification.

Classification, for callers deciding whether to retry:

- throttled (retryable): HTTP 429, HTTP 503, or Code ``SlowDown`` at any status;
- retryable: any other 5xx, and 408 (the server gave up waiting for the request);
- permanent: every other status, 409 included (a conflict does not resolve by resending the same
  request) and 3xx (a redirect means a wrong endpoint, not a transient state);
- transport (retryable, status 0): connection failures and timeouts.

``in_doubt`` marks failures after which CI may have acted on the request anyway. It matters for
create, which is not idempotent: the caller must look the job up (by its unique name) before
sending again. Set for transport failures once the request may have left, for 5xx other than 503
(the server took the request and failed somewhere inside), and for unreadable 2xx answers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from service.xmlsafe import DocumentError, parse_xml

_SNIPPET = 200  # how much of a non-XML error body to keep in the message


class CIError(Exception):
    """A CI call failed. ``status`` is the HTTP status, 0 when no answer came back."""

    retryable = False
    throttled = False

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        request_id: str = "",
        trace_id: str = "",
        in_doubt: bool = False,
    ) -> None:
        super().__init__(status, code, message)
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id
        self.trace_id = trace_id
        self.in_doubt = in_doubt

    def __str__(self) -> str:
        where = f" (request {self.request_id})" if self.request_id else ""
        return f"CI {self.status} {self.code or '-'}: {self.message}{where}"


class CIRetryableError(CIError):
    """Sending the same request again later may succeed."""

    retryable = True


class CIPermanentError(CIError):
    """Sending the same request again will fail the same way."""


class CIThrottled(CIRetryableError):
    """CI asked us to slow down (429, 503 or ``SlowDown``)."""

    throttled = True


class CITransportError(CIRetryableError):
    """No HTTP answer: connection refused or lost, or a timeout. ``status`` is 0."""


class CIMalformedResponse(CIRetryableError):
    """A success status with a body that is not the documented answer."""


def error_from_response(status: int, body: bytes, headers: Mapping[str, str]) -> CIError:
    """Turn a non-2xx answer into the matching ``CIError`` subclass.

    Reads ``<Error><Code/><Message/><RequestId/><TraceId/></Error>``; a body that is empty or not
    XML still yields an error, classified by status, with the start of the body as its message.
    """
    fields = _error_fields(body)
    code = fields.get("Code", "")
    if fields:
        message = fields.get("Message", "")
    else:
        message = _snippet(body) or f"HTTP {status} without a body"
    request_id = fields.get("RequestId") or _header(headers, "x-ci-request-id", "x-cos-request-id")
    trace_id = fields.get("TraceId") or _header(headers, "x-ci-trace-id", "x-cos-trace-id")
    kind: type[CIError]
    if status in (429, 503) or code == "SlowDown":
        kind = CIThrottled
    elif status >= 500 or status == 408:
        kind = CIRetryableError
    else:
        kind = CIPermanentError
    return kind(
        status,
        code,
        message,
        request_id=request_id,
        trace_id=trace_id,
        in_doubt=status >= 500 and status != 503,
    )


def _error_fields(body: bytes) -> dict[str, str]:
    try:
        tree = parse_xml(body, max_depth=8)
    except DocumentError:
        return {}
    node: Any = tree.get("Error")
    if node is None:  # some gateways wrap it: <Response><Error>…</Error></Response>
        root = next(iter(tree.values()))
        node = root.get("Error") if isinstance(root, dict) else None
    if not isinstance(node, dict):
        return {}
    return {key: value.strip() for key, value in node.items() if isinstance(value, str)}


def _snippet(body: bytes) -> str:
    return body[:_SNIPPET].decode("utf-8", "replace").strip()


def _header(headers: Mapping[str, str], *names: str) -> str:
    lowered = {key.lower(): value for key, value in headers.items()}
    return next((lowered[name] for name in names if lowered.get(name)), "")
