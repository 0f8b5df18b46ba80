"""Secrets never reach a log line: callback tokens in every logged path (access log, errors,
tracebacks), secret settings by key and by value, SQL parameters at debug level; and the access
log's modes."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from service.accesslog import LOGGER, AccessLog
from service.app import create_app
from service.logging import SECRET_KEYS, configure_logging
from service.redact import redact_path
from service.settings import Settings
from service.tokens import callback_token
from tests.events.support import STATIC_TOKEN, events_settings, task_finish_json
from tests.live import listening

GUARD = 30.0
JOB_TOKEN_JOB = "0123456789abcdef0123456789abcdef"


async def exchange(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), GUARD)
    writer.close()
    return answer


def post(path: str, body: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


def log_lines(capsys: pytest.CaptureFixture[str]) -> tuple[str, list[dict[str, Any]]]:
    err = capsys.readouterr().err
    return err, [json.loads(line) for line in err.splitlines()]


@pytest.fixture(autouse=True)
def stdlib_logging_restored() -> Iterator[None]:
    # configure_logging points the root handler at this test's captured stderr, which closes.
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


def test_the_redaction_keys_are_the_secret_settings() -> None:
    assert {"api_token", "callback_token", "callback_secret", "ci_secret_key"} <= SECRET_KEYS
    assert "ci_bucket" not in SECRET_KEYS
    assert "authorization" in SECRET_KEYS


@pytest.mark.parametrize(
    ("path", "logged"),
    [
        ("/v1/callbacks/abc.def", "/v1/callbacks/[redacted]"),
        ("POST /v1/callbacks/tok?x=1 HTTP/1.1", "POST /v1/callbacks/[redacted]?x=1 HTTP/1.1"),
        ("/v1/jobs/abc", "/v1/jobs/abc"),
        ("/v1/callbacks/[redacted] 200", "/v1/callbacks/[redacted] 200"),
        (
            "at /v1/callbacks/[redacted] and /v1/callbacks/t2",
            "at /v1/callbacks/[redacted] and /v1/callbacks/[redacted]",
        ),
    ],
)
def test_callback_tokens_are_cut_from_paths(path: str, logged: str) -> None:
    assert redact_path(path) == logged


async def test_no_token_reaches_the_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = events_settings(tmp_path, CIRELAY_LOG_LEVEL="debug")
    configure_logging(settings)
    capsys.readouterr()  # only what this test logs from here on
    job_token = callback_token(settings.callback_key, JOB_TOKEN_JOB)
    body = task_finish_json("jredact")
    async with listening(create_app(settings)) as port:
        for token in (STATIC_TOKEN, job_token):
            assert b" 200 " in (await exchange(port, post(f"/v1/callbacks/{token}", body)))[:20]
        # Refused at the parser, and by aiohttp itself (its error carries the request line).
        await exchange(port, post(f"/v1/callbacks/{STATIC_TOKEN}", b"<x"))
        await exchange(port, post(f"/v1/callbacks/{STATIC_TOKEN}" + "a" * 9000, b""))
        structlog.get_logger("t").warning("bound_by_mistake", callback_token=STATIC_TOKEN)
    err, lines = log_lines(capsys)
    for secret in (STATIC_TOKEN, job_token, settings.api_token):
        assert secret not in err
    assert "TaskFinish" not in err  # no callback body in SQL parameters at debug level
    access = [line for line in lines if line.get("logger") == "aiohttp.access"]
    assert {line["event"] for line in access} >= {"POST /v1/callbacks/[redacted] 200"}
    assert all("duration_ms" in line and "status" in line for line in access)


@pytest.mark.parametrize(("mode", "logged"), [("all", [200, 404]), ("errors", [404]), ("off", [])])
async def test_the_access_log_mode(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mode: str, logged: list[int]
) -> None:
    settings: Settings = events_settings(tmp_path, CIRELAY_ACCESS_LOG=mode)
    configure_logging(settings)
    capsys.readouterr()  # only what this test logs from here on
    async with listening(create_app(settings)) as port:
        for path in (b"/healthz", b"/nowhere"):
            await exchange(
                port, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
    _, lines = log_lines(capsys)
    assert [line["status"] for line in lines if line.get("logger") == "aiohttp.access"] == logged


@pytest.mark.parametrize("request_id", ["abc", "", '/v1/callbacks/tok"\n'])
async def test_json_access_lines_are_what_the_log_formatter_renders(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], request_id: str
) -> None:
    # The JSON access line is rendered by the access logger itself (it is on every request's
    # path): the same line as structlog's formatter gives, apart from its time.
    settings = events_settings(tmp_path)
    configure_logging(settings)
    request = make_mocked_request("POST", f"/v1/callbacks/{STATIC_TOKEN}")
    response = web.Response(status=201)
    if request_id:
        response.headers["X-Request-Id"] = request_id
        structlog.contextvars.bind_contextvars(request_id=request_id)
    logger = AccessLog(logging.getLogger(LOGGER), "")
    capsys.readouterr()
    logger.log(request, response, 0.0123456)
    sink, AccessLog.sink = AccessLog.sink, None
    try:
        logger.log(request, response, 0.0123456)
    finally:
        AccessLog.sink = sink
        structlog.contextvars.clear_contextvars()
    _, (fast, formatted) = log_lines(capsys)
    assert fast.pop("timestamp") <= formatted.pop("timestamp")
    assert fast == formatted
    assert fast["event"] == "POST /v1/callbacks/[redacted] 201"
    assert STATIC_TOKEN not in json.dumps(fast)
