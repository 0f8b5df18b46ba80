"""A client that hangs up mid-body is its own doing: counted as status 499 in
``cirelay_http_requests_total`` and logged at INFO without a traceback, never as a 500."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from service.app import create_app
from service.appkeys import METRICS
from service.logging import configure_logging
from service.settings import Settings
from tests.events.support import API_TOKEN, STATIC_TOKEN, events_settings, sample
from tests.live import listening
from tests.pulsar.support import wait_until


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return events_settings(tmp_path)


@pytest.mark.parametrize(
    ("route", "path", "headers"),
    [
        ("/v1/callbacks/{token}", f"/v1/callbacks/{STATIC_TOKEN}", b""),
        (
            "/v1/jobs",
            "/v1/jobs?bucket=media-1250000000&region=ap-guangzhou",
            f"Authorization: Bearer {API_TOKEN}\r\n".encode(),
        ),
    ],
)
async def test_a_hang_up_mid_body_is_a_499_logged_at_info(
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
    route: str,
    path: str,
    headers: bytes,
) -> None:
    configure_logging(settings)
    app = create_app(settings)
    registry = app[METRICS].registry
    async with listening(app) as port:
        await hang_up_mid_body(port, path, headers)

        def counted(status: str) -> float:
            return sample(
                registry, "cirelay_http_requests_total", method="POST", route=route, status=status
            )

        await wait_until(lambda: counted("499") + counted("500") > 0, "the request counted")
    assert (counted("499"), counted("500")) == (1, 0)
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [line for line in lines if line["level"] not in ("debug", "info")] == []
    (hang_up,) = [line for line in lines if line["event"] == "client_disconnected"]
    assert hang_up["level"] == "info"
    assert "exception" not in hang_up


async def hang_up_mid_body(port: int, path: str, headers: bytes) -> None:
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n".encode()
        + headers
        + b"Content-Length: 100000\r\n\r\n"
        + b'{"EventName": "TaskFinish", '
    )
    await writer.drain()
    writer.close()
    await writer.wait_closed()
