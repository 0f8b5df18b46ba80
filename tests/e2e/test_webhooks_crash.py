"""Real processes: `kill -9` of the service while webhook deliveries are pending loses none (on
SQLite and on PostgreSQL), and two replicas on one PostgreSQL never send one delivery twice.

The emulator runs the jobs and calls the service back; the receiver (in this process) refuses
everything with 503 until the service has been killed, then accepts. After the restart every
delivery owed arrives: each job's TaskFinish at its own CallBack (CI's XML body) and its TaskFinish
and BatchFinish at the subscription, all signed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from standardwebhooks import Webhook

from tests.e2e import procs
from tests.e2e.procs import AUTH
from tests.queue.rig import until
from tests.queue.samples import request_json
from tests.webhooks.receiver import Receiver
from tests.webhooks.support import new_secret

pytestmark = pytest.mark.slow

JOBS = 4


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'cirelay.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    started = await Receiver(status=503).start()
    yield started
    await started.stop()


def webhook_service(
    tmp_path: Path, emulator_url: str, database: str, receiver: Receiver, secret: str, name: str
) -> procs.Process:
    service = procs.service(
        tmp_path,
        emulator_url,
        CIRELAY_DATABASE_URL=database,
        CIRELAY_WEBHOOK_URLS=receiver.url,
        CIRELAY_WEBHOOK_SECRET=secret,
        CIRELAY_WEBHOOK_ALLOWED_NETWORKS="127.0.0.0/8",
        CIRELAY_WEBHOOK_RETRY_SCHEDULE=",".join(["0.2"] * 500),
        CIRELAY_RECONCILE_SECONDS="0.2",
        # Attempts in flight when the process is killed stay leased for 2 × this + 5 s.
        CIRELAY_WEBHOOK_TIMEOUT_SECONDS="2",
    )
    service.name = name
    service.log = tmp_path / f"{name}.log"
    service.env["CIRELAY_PUBLIC_URL"] = service.url  # CI calls this process back
    return service


async def submit(session: aiohttp.ClientSession, url: str, name: str, callback: str) -> None:
    async with session.post(
        url + "/v1/jobs",
        data=request_json(name, CallBack=callback),
        headers={**AUTH, "Content-Type": "application/json"},
    ) as resp:
        assert resp.status == 202, await resp.text()


async def test_kill_9_with_deliveries_pending_loses_nothing(
    tmp_path: Path, database: str, receiver: Receiver
) -> None:
    secret = new_secret()
    emulator = procs.emulator(tmp_path)
    service = webhook_service(tmp_path, emulator.url, database, receiver, secret, "service")
    try:
        await emulator.start("/")
        await service.start("/healthz")
        async with aiohttp.ClientSession() as session:
            for n in range(JOBS):
                await submit(session, service.url, f"hook{n}", receiver.url)

            async def all_finished_and_refused() -> bool:
                jobs = await procs.list_jobs(session, service.url)
                return (
                    all(j["state"] == "succeeded" for j in jobs)
                    and len({r.headers["webhook-id"] for r in receiver.received}) >= 2
                )

            await until(all_finished_and_refused, "jobs finished with deliveries pending")
            await service.kill()
            assert receiver.delivered == []
            receiver.status = 200
            await service.start("/healthz")
            # Every job owes three deliveries: CallBack TaskFinish, subscription TaskFinish and
            # BatchFinish. At least once: a repeat carries the same id and body.
            await receiver.wait_until(
                lambda r: len({d.headers["webhook-id"] for d in r.delivered}) == 3 * JOBS
            )
            jobs = await procs.list_jobs(session, service.url)
    finally:
        await service.stop()
        await emulator.stop()

    bodies: dict[str, bytes] = {}
    for delivered in receiver.received:
        assert bodies.setdefault(delivered.headers["webhook-id"], delivered.body) == delivered.body
    kinds: dict[str, list[str]] = {}
    for delivered in receiver.delivered:
        Webhook(secret).verify(delivered.body, delivered.headers, json_parse=False)
        kinds.setdefault(delivered.content_type, []).append(delivered.headers["webhook-id"])
    assert len(set(kinds["application/xml"])) == JOBS  # CI's own TaskFinish bodies
    subscription = [
        Webhook(secret).verify(d.body, d.headers)
        for d in receiver.delivered
        if d.content_type == "application/json"
    ]
    seen = {(e["cirelay_job_id"], e["event_type"]) for e in subscription}
    assert seen == {(j["id"], t) for j in jobs for t in ("TaskFinish", "BatchFinish")}


@pytest.mark.postgres
async def test_two_replicas_never_send_one_delivery_twice(
    tmp_path: Path, postgres_url: str, receiver: Receiver
) -> None:
    receiver.status = 200
    secret = new_secret()
    emulator = procs.emulator(tmp_path)
    replicas = [
        webhook_service(tmp_path, emulator.url, postgres_url, receiver, secret, f"replica{i}")
        for i in range(2)
    ]
    jobs = 3 * JOBS
    try:
        await emulator.start("/")
        for replica in replicas:
            await replica.start("/healthz")
        async with aiohttp.ClientSession() as session:
            for n in range(jobs):
                await submit(session, replicas[n % 2].url, f"rep{n}", receiver.url)
            await receiver.wait_until(
                lambda r: len({d.headers["webhook-id"] for d in r.delivered}) == 3 * jobs
            )
    finally:
        for replica in replicas:
            await replica.stop()
        await emulator.stop()
    ids = [d.headers["webhook-id"] for d in receiver.received]
    assert len(ids) == len(set(ids)) == 3 * jobs  # each sent once, by one replica
