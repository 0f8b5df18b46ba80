"""CI error bodies become typed, classified exceptions."""

from __future__ import annotations

import pytest

from service.ci.errors import (
    CIError,
    CIPermanentError,
    CIRetryableError,
    CIThrottled,
    CITransportError,
    error_from_response,
)


def _error_xml(
    code: str, message: str = "msg", request_id: str = "rid", trace_id: str = "tid"
) -> bytes:
    return (
        f"<?xml version='1.0' encoding='utf-8' ?>\n<Error><Code>{code}</Code>"
        f"<Message>{message}</Message><RequestId>{request_id}</RequestId>"
        f"<TraceId>{trace_id}</TraceId></Error>"
    ).encode()


@pytest.mark.parametrize(
    ("status", "code", "kind", "in_doubt"),
    [
        (400, "InvalidArgument", CIPermanentError, False),
        (401, "InvalidAuthorization", CIPermanentError, False),
        (403, "SignatureDoesNotMatch", CIPermanentError, False),
        (403, "SecretidNotExist", CIPermanentError, False),
        (404, "ResourceNotFound", CIPermanentError, False),
        (409, "Conflict", CIPermanentError, False),
        (302, "", CIPermanentError, False),
        (408, "RequestTimeout", CIRetryableError, False),
        (429, "", CIThrottled, False),
        (503, "ServiceUnavailable", CIThrottled, False),
        (400, "SlowDown", CIThrottled, False),
        (403, "SlowDown", CIThrottled, False),
        (500, "InternalError", CIRetryableError, True),
        (502, "BadGateway", CIRetryableError, True),
        (504, "GatewayTimeout", CIRetryableError, True),
    ],
)
def test_classification(status: int, code: str, kind: type[CIError], in_doubt: bool) -> None:
    error = error_from_response(status, _error_xml(code), {})
    assert type(error) is kind
    assert error.status == status
    assert error.code == code
    assert error.retryable is issubclass(kind, CIRetryableError)
    assert error.throttled is (kind is CIThrottled)
    assert error.in_doubt is in_doubt


def test_fields_are_read_from_the_body() -> None:
    body = _error_xml("InvalidArgument", "Request.Name is invalid", "NjJi==", "trace-1")
    error = error_from_response(400, body, {"x-ci-request-id": "from-header"})
    assert (error.code, error.message, error.request_id, error.trace_id) == (
        "InvalidArgument",
        "Request.Name is invalid",
        "NjJi==",
        "trace-1",
    )
    assert str(error) == "CI 400 InvalidArgument: Request.Name is invalid (request NjJi==)"


def test_ids_fall_back_to_headers() -> None:
    body = b"<Error><Code>InternalError</Code><Message>boom</Message></Error>"
    error = error_from_response(500, body, {"X-Ci-Request-Id": "req-h", "x-cos-trace-id": "tr-h"})
    assert (error.request_id, error.trace_id) == ("req-h", "tr-h")


def test_error_wrapped_in_response_is_read() -> None:
    body = b"<Response><Error><Code>InvalidArgument</Code><Message>m</Message></Error></Response>"
    error = error_from_response(400, body, {})
    assert (error.code, error.message) == ("InvalidArgument", "m")


def test_error_without_message_keeps_empty_message() -> None:
    error = error_from_response(404, b"<Error><Code>ResourceNotFound</Code></Error>", {})
    assert (error.code, error.message) == ("ResourceNotFound", "")


def test_non_xml_body_is_kept_as_message() -> None:
    body = b"<html><body>502 Bad Gateway</body>"
    error = error_from_response(502, body, {"x-ci-request-id": "r"})
    assert type(error) is CIRetryableError
    assert error.code == ""
    assert error.message == body.decode()
    assert error.request_id == "r"


def test_long_non_xml_body_is_truncated() -> None:
    error = error_from_response(500, b"x" * 5000, {})
    assert error.message == "x" * 200


def test_empty_body_is_classified_by_status() -> None:
    error = error_from_response(429, b"", {})
    assert type(error) is CIThrottled
    assert error.message == "HTTP 429 without a body"
    assert error.code == ""


def test_doctype_body_is_not_parsed() -> None:
    body = b'<!DOCTYPE x [<!ENTITY e "boom">]><Error><Code>&e;</Code></Error>'
    error = error_from_response(400, body, {})
    assert type(error) is CIPermanentError
    assert error.code == ""


def test_binary_body_is_tolerated() -> None:
    error = error_from_response(500, b"\xff\xfe\x00garbage", {})
    assert type(error) is CIRetryableError
    assert error.code == ""


def test_hierarchy() -> None:
    assert issubclass(CIThrottled, CIRetryableError)
    assert issubclass(CITransportError, CIRetryableError)
    assert issubclass(CIRetryableError, CIError)
    assert issubclass(CIPermanentError, CIError)
    assert not issubclass(CIPermanentError, CIRetryableError)
    transport = CITransportError(0, "Timeout", "timed out", in_doubt=True)
    assert (transport.status, transport.retryable, transport.throttled) == (0, True, False)
    assert str(transport) == "CI 0 Timeout: timed out"
