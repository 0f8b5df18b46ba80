"""A real SQLite queue file per test, a factory for new jobs, and the submitter rig."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from service.emulator.app import create_emulator_app
from service.metrics import Metrics
from service.queue import NewJob
from service.ratelimit import RateLimiter
from service.settings import Settings
from service.storage.sqlite.database import Database
from service.storage.sqlite.queue import SQLiteJobQueue
from tests.queue.rig import Rig, ci_client, emulator_settings, service_settings

_counter = itertools.count()

NewJobFactory = Callable[..., NewJob]


def make_job(
    *, level: int = 0, key: str | None = None, fingerprint: str | None = None, name: str = "demo"
) -> NewJob:
    n = next(_counter)
    job_id = f"job{n:06d}"
    return NewJob(
        id=job_id,
        bucket="media-1250000000",
        region="ap-chongqing",
        tag="Transcode",
        job_level=level,
        request={"Name": name, "Type": "Job"},
        submit_name=f"{name}-{n:016x}",
        caller_callback="",
        via="http",
        idempotency_key=key,
        fingerprint=fingerprint,
    )


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = await Database.open(str(tmp_path / "queue.db"))
    yield database
    await database.close()


@pytest.fixture
async def queue(db: Database) -> SQLiteJobQueue:
    return await SQLiteJobQueue.open(db)


RigFactory = Callable[..., Awaitable[Rig]]


@pytest.fixture
async def make_rig(
    settings: Settings,
    queue: SQLiteJobQueue,
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
