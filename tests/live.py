"""The service app on a real socket, run by its own event loop in a thread, for synchronous tests
(hypothesis drives one request at a time), and a raw HTTP/1.1 exchange over a plain socket."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import NamedTuple

from aiohttp import web

from service.app import create_app
from service.appkeys import SETTINGS
from service.server import BoundedSite, service_runner
from service.settings import Settings

START_TIMEOUT = 30.0
# A guard against a hung server, not a measure of speed.
ANSWER_TIMEOUT = 30.0


@asynccontextmanager
async def listening(app: web.Application) -> AsyncIterator[int]:
    """The port of ``app`` served on loopback as ``cirelay serve`` serves it (bounded, with its
    time-outs; handlers are not cancelled when their client goes, as aiohttp's TestServer does)."""
    settings = app[SETTINGS]
    runner = service_runner(app, settings)
    await runner.setup()
    try:
        site = BoundedSite(runner, "127.0.0.1", 0, max_connections=settings.max_connections)
        await site.start()
        yield site.port
    finally:
        await runner.cleanup()


@contextmanager
def serving(settings: Settings) -> Iterator[tuple[web.Application, int]]:
    """(app, port) of ``create_app(settings)`` listening on loopback until the block ends."""
    app = create_app(settings)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)

    async def start() -> int:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port: int = runner.addresses[0][1]
        return port

    thread = threading.Thread(target=loop.run_forever, name="live-server", daemon=True)
    thread.start()
    port = asyncio.run_coroutine_threadsafe(start(), loop).result(START_TIMEOUT)
    try:
        yield app, port
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(START_TIMEOUT)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(START_TIMEOUT)
        loop.close()


class Answer(NamedTuple):
    status: int
    head: bytes  # status line and headers
    body: bytes


def raw_exchange(port: int, request: bytes) -> Answer:
    """Send ``request`` as is (it should say ``Connection: close``) and read the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=ANSWER_TIMEOUT) as conn:
        conn.sendall(request)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    answer = b"".join(chunks)
    head, _, body = answer.partition(b"\r\n\r\n")
    return Answer(int(head.split(b" ", 2)[1]), head, body)


def http_request(
    method: str, path: bytes, headers: dict[bytes, bytes] | None = None, body: bytes = b""
) -> bytes:
    """One HTTP/1.1 request with a Content-Length and ``Connection: close``, bytes as given."""
    lines = [method.encode() + b" " + path + b" HTTP/1.1", b"Host: 127.0.0.1"]
    lines += [name + b": " + value for name, value in (headers or {}).items()]
    lines += [b"Content-Length: " + str(len(body)).encode(), b"Connection: close"]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body
