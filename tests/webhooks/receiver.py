"""A real webhook receiver on a loopback socket that records every request it is sent.

Tests steer it by its fields: ``status`` (and ``headers``) answered, ``gate`` to hold requests
until the test opens it. ``wait_until`` awaits what the test expects instead of sleeping.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from tests.ports import free_port

WAIT_SECONDS = 30.0


@dataclass(frozen=True)
class Received:
    body: bytes
    headers: dict[str, str]
    status: int  # what the receiver answered

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "")


@dataclass
class Receiver:
    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    gate: asyncio.Event | None = None
    received: list[Received] = field(default_factory=list)
    held: int = 0  # requests waiting at the gate
    _runner: web.AppRunner | None = None
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/hook"

    @property
    def delivered(self) -> list[Received]:
        return [r for r in self.received if 200 <= r.status < 300]

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.gate is not None:
            async with self._changed:
                self.held += 1
                self._changed.notify_all()
            await self.gate.wait()
            self.held -= 1
        status, headers = self.status, dict(self.headers)
        async with self._changed:
            self.received.append(Received(body, dict(request.headers), status))
            self._changed.notify_all()
        return web.Response(status=status, headers=headers)

    async def wait_until(self, done: Callable[[Receiver], bool]) -> None:
        async with asyncio.timeout(WAIT_SECONDS), self._changed:
            await self._changed.wait_for(lambda: done(self))
