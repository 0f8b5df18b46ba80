"""The service's listeners: header and body time-outs, and a bound on open connections that
evicts idle connections so a probe still gets in."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from service.app import create_app
from service.settings import Settings
from tests.events.support import STATIC_TOKEN, events_settings
from tests.live import listening

# Guards against a hung server, not measures of speed.
GUARD = 30.0


def settings_for(tmp_path: Path, **environ: str) -> Settings:
    return events_settings(tmp_path, **environ)


async def read_answer(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.read(), GUARD)


async def test_a_connection_whose_headers_never_finish_is_closed(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, CIRELAY_IDLE_TIMEOUT_SECONDS="0.2")
    async with listening(create_app(settings)) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # no blank line: never complete
        await writer.drain()
        assert await read_answer(reader) == b""  # closed by the server, no answer
        writer.close()


async def test_a_body_that_does_not_arrive_in_time_is_408(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, CIRELAY_BODY_TIMEOUT_SECONDS="0.2")
    async with listening(create_app(settings)) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            f"POST /v1/callbacks/{STATIC_TOKEN} HTTP/1.1\r\nHost: x\r\n".encode()
            + b"Content-Length: 1000\r\nConnection: close\r\n\r\n<Response>"
        )
        await writer.drain()
        answer = await read_answer(reader)
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ")
    assert json.loads(body)["error"]["code"] == "body_timeout"


async def test_idle_connections_past_the_bound_make_room_for_a_probe(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, CIRELAY_MAX_CONNECTIONS="10")
    async with listening(create_app(settings)) as port:
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(30)]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await writer.drain()
        assert (await read_answer(reader)).startswith(b"HTTP/1.1 200 ")
        writer.close()
        # The oldest idle connections were closed to make room; the newest are still open.
        closed = [await asyncio.wait_for(r.read(), GUARD) == b"" for r, _ in idle[:20]]
        assert all(closed)
        for _, w in idle:
            w.close()
