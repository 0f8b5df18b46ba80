"""Helpers for the Pulsar tests: settings, a running app, the broker's admin API, topic readers,
and waiting for a condition with a deadline (a safety net against hangs, never what is measured)."""

from __future__ import annotations

import asyncio
import inspect
import json
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import pulsar
import pulsar.asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from service.app import create_app
from service.pulsar.messages import OUTCOMES
from service.settings import Settings
from tests.events.support import events_settings

WAIT = 60.0  # seconds: a broker restart or a redelivery delay fits well inside this
Client = TestClient[web.Request, web.Application]


class Broker(Protocol):
    """What these helpers need of ``tests.pulsar_broker.PulsarBroker``."""

    @property
    def url(self) -> str: ...

    @property
    def admin_url(self) -> str: ...

    @property
    def token(self) -> str: ...


def topic(prefix: str) -> str:
    """A topic no other test uses."""
    return f"persistent://public/default/{prefix}-{uuid.uuid4().hex[:12]}"


def pulsar_settings(tmp_path: Path, broker: Broker, **environ: str) -> Settings:
    """Settings of an app on ``broker``: short redelivery delay, no CI, no reconciler."""
    defaults = {
        "CIRELAY_PULSAR_URL": broker.url,
        "CIRELAY_PULSAR_TOKEN": broker.token,
        "CIRELAY_PULSAR_SUBSCRIPTION": "cirelay-test",
        "CIRELAY_PULSAR_REDELIVERY_DELAY_SECONDS": "0.2",
        "CIRELAY_PULSAR_MAX_REDELIVERIES": "2",
        "CIRELAY_SHUTDOWN_GRACE_SECONDS": "2",
        # Never used (no jobs are submitted), but present so that /readyz can be fully ready.
        "CIRELAY_CI_SECRET_ID": "AKIDunused",
        "CIRELAY_CI_SECRET_KEY": "unused",
    }
    return events_settings(tmp_path, **{**defaults, **environ})


@asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[Client]:
    """The whole service app (every cleanup context, Pulsar included) on a loopback socket."""
    client: Client = TestClient(TestServer(create_app(settings), host="127.0.0.1"))
    try:
        # Inside the try: a start-up that fails half-way must still close what it opened.
        await client.start_server()
        yield client
    finally:
        await client.close()


def outcomes(registry: Any, component: str) -> dict[str, float | None]:
    """``cirelay_pulsar_messages_total`` of one component, by outcome."""
    return {
        outcome: registry.get_sample_value(
            "cirelay_pulsar_messages_total", {"component": component, "outcome": outcome}
        )
        for outcome in OUTCOMES
    }


async def settled_outcomes(
    registry: Any, component: str, expected: dict[str, float]
) -> dict[str, float | None]:
    """The outcomes once those named in ``expected`` reached it (each is counted just after the
    broker has the acknowledgement, so the broker may show it first)."""

    def reached() -> dict[str, float | None] | None:
        counts = outcomes(registry, component)
        return counts if all(counts[k] == v for k, v in expected.items()) else None

    counts = await wait_until(reached, f"{component} outcomes {expected}")
    assert isinstance(counts, dict)
    return counts


async def wait_until(
    condition: Callable[[], Any], what: str, within: float = WAIT, every: float = 0.05
) -> Any:
    """Await ``condition()`` (sync or async) until it is truthy; returns its value."""
    deadline = time.monotonic() + within
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(every)


def client_for(broker: Broker) -> Any:
    return pulsar.asyncio.Client(
        broker.url,
        authentication=pulsar.AuthenticationToken(broker.token),
        operation_timeout_seconds=10,
    )


async def publish(
    client: Any, name: str, bodies: list[bytes], properties: dict[str, str] | None = None
) -> None:
    producer = await client.create_producer(name, batching_enabled=False)
    try:
        for body in bodies:
            await producer.send(body, properties=properties)
    finally:
        await producer.close()


async def read_topic(client: Any, name: str, count: int, within: float = WAIT) -> list[Any]:
    """The first ``count`` messages of ``name`` (a fresh subscription from the earliest)."""
    consumer = await client.subscribe(
        name,
        f"reader-{uuid.uuid4().hex[:8]}",
        initial_position=pulsar.InitialPosition.Earliest,
    )
    try:
        messages: list[Any] = []
        async with asyncio.timeout(within):
            while len(messages) < count:
                message = await consumer.receive()
                await consumer.acknowledge(message)
                messages.append(message)
        return messages
    finally:
        await consumer.close()


async def topic_is_quiet(client: Any, name: str, after: int, settle: float = 1.0) -> bool:
    """True when ``name`` holds exactly ``after`` messages: read them, then nothing more arrives
    within ``settle`` seconds (used only to check that nothing extra was published)."""
    consumer = await client.subscribe(
        name, f"quiet-{uuid.uuid4().hex[:8]}", initial_position=pulsar.InitialPosition.Earliest
    )
    try:
        for _ in range(after):
            await consumer.acknowledge(await asyncio.wait_for(consumer.receive(), WAIT))
        try:
            await asyncio.wait_for(consumer.receive(), settle)
        except TimeoutError:
            return True
        return False
    finally:
        await consumer.close()


class Admin:
    """The broker's REST admin API with the superuser token."""

    def __init__(self, broker: Broker) -> None:
        self._base = broker.admin_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {broker.token}"}

    async def get(self, path: str) -> Any:
        async with (
            aiohttp.ClientSession(headers=self._headers) as session,
            session.get(self._base + path, timeout=aiohttp.ClientTimeout(total=10)) as response,
        ):
            response.raise_for_status()
            return await response.json()

    async def subscription(self, name: str, subscription: str) -> dict[str, Any]:
        """Stats of one subscription of a topic: msgBacklog, msgOutCounter, consumers, …"""
        path = name.removeprefix("persistent://")
        stats = await self.get(f"/admin/v2/persistent/{path}/stats")
        found: dict[str, Any] = stats["subscriptions"].get(subscription, {})
        return found


def event_rows(db_path: Path) -> list[dict[str, Any]]:
    """Every stored event (a reader of the service's SQLite file, as another process would be)."""
    if not db_path.exists():
        return []
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
    try:
        if not conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'events'"
        ).fetchone():
            return []
        rows = conn.execute("SELECT body FROM events ORDER BY seq").fetchall()
    finally:
        conn.close()
    return [json.loads(row[0]) for row in rows]


def db_path_of(settings: Settings) -> Path:
    return Path(settings.sqlite_path)
