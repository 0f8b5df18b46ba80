"""`cirelay serve`'s listeners: bounded connections, header time-outs, graceful SIGTERM.

``web.run_app`` offers no bound on open connections; a few hundred idle ones exhaust a modest
file-descriptor limit, after which nothing (the probes included) is accepted. Each listener here
keeps at most ``max_connections`` open: past it, the connection idle longest (no request in flight)
is closed to make room, or the new one when every connection is busy, so a flood of idle
connections cannot lock out a probe. Requests whose headers don't arrive within the idle time-out
are closed by aiohttp's keep-alive timer, which runs from the moment a connection opens.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import structlog
from aiohttp import web

from service.accesslog import AccessLog, ErrorAccessLog
from service.settings import Settings

log = structlog.get_logger(__name__)


def service_runner(app: web.Application, settings: Settings) -> web.AppRunner:
    """The runner `cirelay serve` serves ``app`` with: idle/header time-out, shutdown grace, and
    the access log as configured."""
    access: dict[str, Any] = (
        {"access_log": None}
        if settings.access_log == "off"
        else {"access_log_class": ErrorAccessLog if settings.access_log == "errors" else AccessLog}
    )
    return web.AppRunner(
        app,
        keepalive_timeout=settings.idle_timeout_seconds,
        shutdown_timeout=settings.shutdown_grace_seconds,
        **access,
    )


class BoundedSite(web.BaseSite):
    """A TCP listener of ``runner`` that keeps at most ``max_connections`` connections open."""

    __slots__ = ("_host", "_max_connections", "_port")

    def __init__(
        self, runner: web.BaseRunner, host: str, port: int, *, max_connections: int
    ) -> None:
        super().__init__(runner)
        self._host = host
        self._port = port
        self._max_connections = max_connections

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self.port}"

    @property
    def port(self) -> int:
        """The bound port (the one asked for, or the one the system chose for 0)."""
        if not isinstance(self._server, asyncio.Server) or not self._server.sockets:
            return self._port
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._admit, self._host, self._port, backlog=self._backlog, reuse_address=True
        )

    def _admit(self) -> asyncio.BaseProtocol:
        server = self._runner.server
        assert server is not None  # set by runner.setup(), before any site starts
        # Oldest first; a connection closed a moment ago stays listed until its close completes.
        open_now = [h for h in server.connections if h.transport is not None]
        if len(open_now) >= self._max_connections:
            # aiohttp keeps "a request is being handled" private; it is what tells idle from busy.
            idle = next((h for h in open_now if not h._request_in_progress), None)
            if idle is None:
                log.warning("connection_refused", reason="limit", limit=self._max_connections)
                return _Refused()
            log.warning("connection_evicted", reason="limit", limit=self._max_connections)
            idle.force_close()
        return server()


class _Refused(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


async def serve_until_signalled(
    sites: list[tuple[web.AppRunner, str, int, int]], *, on_started: str = "listening"
) -> None:
    """Start each (runner, host, port, max connections) listener; stop on SIGTERM or SIGINT.

    The runners' cleanup gives in-flight requests their ``shutdown_timeout``, then runs the apps'
    cleanup contexts (the submitter's grace period among them)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    runners: list[web.AppRunner] = []
    try:
        for runner, host, port, max_connections in sites:
            if runner not in runners:
                await runner.setup()
                runners.append(runner)
            site = BoundedSite(runner, host, port, max_connections=max_connections)
            await site.start()
            log.info(on_started, url=site.name)
        await stop.wait()
    finally:
        for runner in reversed(runners):
            await runner.cleanup()
