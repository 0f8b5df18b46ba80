"""PostgreSQL going away under callback traffic: the API answers 503 (never 500), `/readyz`
reports `database` down, every acknowledged callback is there after the server is back, and the
service recovered by itself (the same app, no restart)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from service.app import create_app
from service.appkeys import EVENT_STORE, QUEUE, SETTINGS
from service.tokens import callback_token
from tests.events.support import (
    API_TOKEN,
    STATIC_TOKEN,
    events_settings,
    submitted_job,
    task_finish_json,
    task_finish_xml,
)
from tests.postgres_server import PostgresServer
from tests.queue.samples import BUCKET, REGION, request_json

Client = TestClient[web.Request, web.Application]
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


class Traffic:
    """Callbacks posted without pause by a few senders, each answer recorded as it comes."""

    def __init__(self, client: Client, tokens: list[str]) -> None:
        self.client = client
        self.tokens = tokens
        self.answers: list[tuple[str, int]] = []  # (media job id, status) in answer order
        self.changed = asyncio.Condition()
        self.stopping = asyncio.Event()
        self._ids = itertools.count()

    def count(self, status: int) -> int:
        return sum(1 for _, s in self.answers if s == status)

    async def until(self, status: int, more: int) -> None:
        """Returns once ``more`` further answers with ``status`` came in."""
        target = self.count(status) + more
        async with self.changed:
            await self.changed.wait_for(lambda: self.count(status) >= target)

    async def send(self, sender: int) -> None:
        token = self.tokens[sender % len(self.tokens)]
        while not self.stopping.is_set():
            media_job_id = f"m-{sender}-{next(self._ids)}"
            body = task_finish_xml(media_job_id) if sender % 2 else task_finish_json(media_job_id)
            resp = await self.client.post(f"/v1/callbacks/{token}", data=body)
            if resp.status == 503:
                assert (await resp.json())["error"]["code"] == "unavailable"
            async with self.changed:
                self.answers.append((media_job_id, resp.status))
                self.changed.notify_all()


async def readiness(client: Client) -> tuple[int, dict[str, Any]]:
    resp = await client.get("/readyz")
    body: dict[str, Any] = await resp.json()
    return resp.status, body["components"]["database"]


async def test_postgres_halted_under_callback_traffic(
    tmp_path: Path,
    postgres_url: str,
    postgres_server: PostgresServer,
    aiohttp_client: Callable[..., Awaitable[Client]],
) -> None:
    # CI credentials only so that the database is the one thing /readyz can miss (the submitter,
    # the only caller of CI, is off).
    settings = events_settings(tmp_path, CIRELAY_DATABASE_URL=postgres_url).replace(
        ci_bucket=BUCKET, ci_region=REGION, ci_secret_id="id", ci_secret_key="key"
    )
    client = await aiohttp_client(create_app(settings))
    job = await submitted_job(client.app[QUEUE])
    # Per-job tokens read the job (the queue) as well as store the event; the static one only
    # stores.
    traffic = Traffic(
        client, [callback_token(client.app[SETTINGS].callback_key, job.id), STATIC_TOKEN]
    )
    senders = [asyncio.create_task(traffic.send(n)) for n in range(4)]
    try:
        async with asyncio.timeout(60):
            await traffic.until(200, 20)
            await asyncio.to_thread(postgres_server.halt)
            await traffic.until(503, 20)

            status, database = await readiness(client)
            assert (status, database["ok"]) == (503, False)
            feed = await client.get("/v1/events", headers=AUTH)
            assert (feed.status, (await feed.json())["error"]["code"]) == (503, "unavailable")
            intake = await client.post(
                "/v1/jobs",
                data=request_json(),
                headers={**AUTH, "Content-Type": "application/json"},
            )
            assert (intake.status, (await intake.json())["error"]["code"]) == (503, "unavailable")

            await asyncio.to_thread(postgres_server.resume)
            await traffic.until(200, 20)  # recovered by itself: the same app, no restart
    finally:
        traffic.stopping.set()
        await asyncio.gather(*senders)

    assert {status for _, status in traffic.answers} == {200, 503}  # never a 500
    status, database = await readiness(client)
    assert (status, database["ok"]) == (200, True)
    acknowledged = {media_job_id for media_job_id, status in traffic.answers if status == 200}
    stored = await client.app[EVENT_STORE].job_ids_with("TaskFinish", acknowledged)
    assert stored == acknowledged
