"""A real queue per test on each backend (SQLite file, PostgreSQL database), and the submitter rig.

The backend fixtures (``backend``, ``storage_url``, ``open_backend``) are the storage contract
suite's own, so every test here that takes ``queue`` runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from service.emulator.app import create_emulator_app
from service.metrics import Metrics
from service.queue import JobQueue
from service.ratelimit import RateLimiter
from service.settings import Settings
from tests.queue.rig import Rig, ci_client, emulator_settings, service_settings
from tests.storage.conftest import OpenBackend, backend, open_backend, storage_url

__all__ = ["backend", "open_backend", "storage_url"]  # fixtures shared with tests/storage


@pytest.fixture
async def queue(open_backend: OpenBackend) -> JobQueue:
    return (await open_backend()).queue


RigFactory = Callable[..., Awaitable[Rig]]


@pytest.fixture
async def make_rig(
    settings: Settings,
    queue: JobQueue,
    aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> AsyncIterator[RigFactory]:
    """Start the emulator with the given faults (``emulator_*`` keys) and build the submitter's
    collaborators with the given service settings (other keys)."""
    sessions: list[aiohttp.ClientSession] = []

    async def factory(**overrides: Any) -> Rig:
        emulator = {k: v for k, v in overrides.items() if k.startswith("emulator_")}
        service = {k: v for k, v in overrides.items() if not k.startswith("emulator_")}
        server = await aiohttp_server(create_emulator_app(emulator_settings(settings, **emulator)))
        config = service_settings(settings, server, **service)
        session = aiohttp.ClientSession()
        sessions.append(session)
        metrics = Metrics()
        return Rig(
            settings=config,
            server=server,
            queue=queue,
            session=session,
            ci=ci_client(session, config, metrics),
            limiter=RateLimiter(config.ci_rate_limit, config.ci_concurrency),
            metrics=metrics,
        )

    yield factory
    for session in sessions:
        await session.close()
