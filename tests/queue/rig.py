"""A submitter rig: the real emulator app on a real socket, a real queue, the CI client."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer

from service.ci.client import CIClient
from service.ci.errors import CIRetryableError
from service.ci.signing import Credentials
from service.intake import Target, enqueue
from service.metrics import Metrics
from service.queue import JobQueue, JobRecord
from service.ratelimit import RateLimiter
from service.request import parse_request
from service.settings import Settings
from service.submitter import Submitter
from tests.queue.samples import BUCKET, REGION, request_json

SECRET_ID = "AKIDcirelaytest0001"
SECRET_KEY = "cirelay-test-secret-key"
TARGET = Target(BUCKET, REGION)


def emulator_settings(base: Settings, **overrides: Any) -> Settings:
    """Emulator settings: our test key, quick media jobs, seeded faults."""
    values: dict[str, Any] = {
        "emulator_credentials": f"{SECRET_ID}:{SECRET_KEY}",
        "emulator_job_seconds": 0.01,
        "emulator_seed": 7,
    }
    values.update(overrides)
    return base.replace(**values)


def service_settings(base: Settings, server: TestServer, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "ci_endpoint": str(server.make_url("/")).rstrip("/"),
        "ci_secret_id": SECRET_ID,
        "ci_secret_key": SECRET_KEY,
        "ci_bucket": BUCKET,
        "ci_region": REGION,
        "ci_timeout_seconds": 2.0,
        "retry_base_seconds": 0.005,
        "retry_cap_seconds": 0.05,
        "poll_interval_seconds": 0.05,
        "ci_rate_limit": 1000.0,
    }
    values.update(overrides)
    return base.replace(**values)


@dataclass
class Rig:
    settings: Settings
    server: TestServer
    queue: JobQueue
    session: aiohttp.ClientSession
    ci: CIClient
    limiter: RateLimiter
    metrics: Metrics

    def submitter(self, **overrides: Any) -> Submitter:
        settings = self.settings.replace(**overrides) if overrides else self.settings
        return Submitter(self.queue, self.ci, self.limiter, settings, self.metrics)

    async def enqueue(self, names: Sequence[str], *, level: int | None = None) -> list[JobRecord]:
        jobs = []
        for name in names:
            job, _ = await enqueue(
                self.queue, parse_request(request_json(name, level=level)), TARGET, via="http"
            )
            jobs.append(job)
        return jobs

    async def states(self, jobs: Sequence[JobRecord]) -> list[str]:
        found = [await self.queue.get(job.id) for job in jobs]
        return [job.state if job is not None else "missing" for job in found]

    async def in_doubt(self, jobs: Sequence[JobRecord]) -> int:
        found = [await self.queue.get(job.id) for job in jobs]
        return sum(1 for job in found if job is not None and job.in_doubt)

    async def stats(self) -> dict[str, Any]:
        async with self.session.get(self.server.make_url("/_emulator/stats")) as resp:
            result: dict[str, Any] = await resp.json()
        return result

    async def created_at_ci(self) -> int:
        return int((await self.stats())["batches_created"].get(BUCKET, 0))

    async def names_at_ci(self) -> list[str]:
        return await names_at_ci(self.ci)

    def submitted(self, outcome: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "cirelay_jobs_submitted_total", {"outcome": outcome}
        )
        return value or 0.0


async def until(check: Callable[[], Awaitable[bool]], what: str, deadline: float = 60) -> None:
    """Poll state held by another process or a background task (there is nothing to await)
    until ``check`` holds."""
    give_up = time.monotonic() + deadline
    while not await check():
        if time.monotonic() > give_up:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def ci_client(session: aiohttp.ClientSession, settings: Settings, metrics: Metrics) -> CIClient:
    return CIClient(
        session,
        Credentials(settings.ci_secret_id, settings.ci_secret_key),
        endpoint=settings.ci_endpoint,
        timeout=settings.ci_timeout_seconds,
        metrics=metrics,
    )


async def names_at_ci(ci: CIClient) -> list[str]:
    """Every batch name at CI, through CI's own list call (all pages), retrying the faults the
    emulator injects into this call too."""
    names: list[str] = []
    token = ""
    while True:
        try:
            page = await ci.list(BUCKET, REGION, size=100, next_token=token)
        except CIRetryableError:
            continue
        names += [job.name for job in page.jobs]
        token = page.next_token
        if not token:
            return names
