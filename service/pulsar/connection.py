"""The process's one Pulsar client (token auth, as TDMQ uses) and whether its links are connected.

pulsar-client's C++ core reconnects every consumer and producer by itself, with backoff, when the
broker goes away. What cirelay adds is watching that state: each component that holds a consumer or
producer registers it here, and ``cirelay_pulsar_connected`` and the ``pulsar`` readiness check say
whether all of them are connected, so ``/readyz`` reports not ready while the broker is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import pulsar
import pulsar.asyncio
import structlog

from service.metrics import Metrics
from service.settings import Settings

log = structlog.get_logger(__name__)

# How often the connected gauge is refreshed.
CHECK_SECONDS = 0.5
# Lookups, subscribe and producer creation fail after this (then the caller retries with backoff);
# the client's default of 30 s would leave a component silent for long while the broker is away.
OPERATION_TIMEOUT_SECONDS = 10
# Closing the client when the broker is unreachable must not hold up shutdown.
CLOSE_TIMEOUT_SECONDS = 5.0


def consumer_connected(consumer: Any) -> bool:
    # pulsar.asyncio.Consumer (3.13) has no is_connected(); the C++ consumer it wraps does.
    return bool(consumer._consumer.is_connected())


class PulsarConnection:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        auth = pulsar.AuthenticationToken(settings.pulsar_token) if settings.pulsar_token else None
        self.client: Any = pulsar.asyncio.Client(
            settings.pulsar_url,
            authentication=auth,
            operation_timeout_seconds=OPERATION_TIMEOUT_SECONDS,
            logger=logging.getLogger("pulsar"),
        )
        self._metrics = metrics
        self._expected: set[str] = set()
        self._links: dict[str, Callable[[], bool]] = {}
        self._failures: dict[str, str] = {}
        self._was_connected = False
        self._monitor: asyncio.Task[None] | None = None

    def expect(self, name: str) -> None:
        """Declare a component that will hold a link: not connected until it attaches one."""
        self._expected.add(name)

    def attach(self, name: str, is_connected: Callable[[], bool]) -> None:
        self._links[name] = is_connected
        self._failures.pop(name, None)

    def detach(self, name: str) -> None:
        self._links.pop(name, None)

    def failed(self, name: str, error: str) -> None:
        """A component could not connect (it retries): say why in the readiness detail."""
        self._failures[name] = error

    def state(self) -> tuple[bool, str]:
        """(connected, detail): connected when every expected component's link is."""
        down = []
        for name in sorted(self._expected):
            link = self._links.get(name)
            if link is None:
                failure = self._failures.get(name)
                down.append(f"{name}: {failure}" if failure else f"{name}: connecting")
            elif not link():
                down.append(f"{name}: disconnected")
        if down:
            return False, "; ".join(down)
        return True, "connected" if self._expected else "no topics configured"

    async def readiness(self) -> tuple[bool, str]:
        return self.state()

    def start(self) -> None:
        self._monitor = asyncio.create_task(self._watch(), name="pulsar-connection-monitor")

    async def close(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
        self._metrics.pulsar_connected.set(0)
        try:
            await asyncio.wait_for(self.client.close(), CLOSE_TIMEOUT_SECONDS)
        except (TimeoutError, pulsar.asyncio.PulsarException) as exc:
            log.warning("pulsar_close_failed", error=f"{type(exc).__name__}: {exc}")

    async def _watch(self) -> None:
        while True:
            connected, detail = self.state()
            self._metrics.pulsar_connected.set(1 if connected else 0)
            if connected != self._was_connected:
                if connected:
                    log.info("pulsar_connected")
                else:
                    log.warning("pulsar_not_connected", detail=detail)
                self._was_connected = connected
            await asyncio.sleep(CHECK_SECONDS)
