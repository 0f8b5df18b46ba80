"""Real processes: `kill -9` of the service during intake and during submission, and SIGTERM.

Every job a client was told about survives, and CI (the emulator process, counted through its
own list call) holds each job exactly once.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e import procs
from tests.e2e.procs import AUTH
from tests.queue.rig import until
from tests.queue.samples import request_json

pytestmark = pytest.mark.slow

JSON = {"Content-Type": "application/json"}


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[list[procs.Process]]:
    """Processes a test started; whatever is still alive is killed at the end."""
    started: list[procs.Process] = []
    yield started
    for proc in started:
        await proc.stop()


async def start(running: list[procs.Process], proc: procs.Process, ready: str) -> procs.Process:
    running.append(proc)
    await proc.start(ready)
    return proc


async def post(
    session: aiohttp.ClientSession, url: str, name: str, key: str
) -> tuple[int, dict[str, Any]] | None:
    """POST one job; None when the service died before answering."""
    try:
        async with session.post(
            url + "/v1/jobs",
            data=request_json(name),
            headers={**AUTH, **JSON, "Idempotency-Key": key},
        ) as resp:
            return resp.status, await resp.json()
    except aiohttp.ClientError:
        return None


def leased_or_in_doubt(db: Path) -> tuple[int, int]:
    with sqlite3.connect(db) as conn:
        leased = conn.execute("SELECT COUNT(*) FROM jobs WHERE lease_owner IS NOT NULL").fetchone()
        doubt = conn.execute("SELECT COUNT(*) FROM jobs WHERE in_doubt = 1").fetchone()
    return int(leased[0]), int(doubt[0])


async def check_exactly_once(
    session: aiohttp.ClientSession, service_url: str, emulator_url: str, expected: int
) -> list[dict[str, Any]]:
    jobs = await procs.wait_all_submitted(session, service_url, expected)
    assert len(jobs) == expected
    assert {j["state"] for j in jobs} <= {"submitted", "running", "succeeded"}
    names = await procs.names_at_ci(session, emulator_url)
    assert len(names) == len(set(names)) == expected  # nothing created twice
    assert set(names) == {j["ci_name"] for j in jobs}
    assert await procs.created_at_ci(session, emulator_url) == expected
    return jobs


async def test_kill_9_during_intake_loses_no_accepted_job(
    tmp_path: Path, session: aiohttp.ClientSession, running: list[procs.Process]
) -> None:
    emulator = await start(running, procs.emulator(tmp_path), "/")
    service = await start(running, procs.service(tmp_path, emulator.url), "/healthz")
    keys = [f"order-{i}" for i in range(60)]
    answers: dict[str, tuple[int, dict[str, Any]] | None] = {}
    enough = asyncio.Event()

    async def client(batch: list[str]) -> None:
        for key in batch:
            answers[key] = await post(session, service.url, key, key)
            if sum(1 for a in answers.values() if a is not None) >= 20:
                enough.set()

    clients = [asyncio.create_task(client(keys[i::6])) for i in range(6)]
    await enough.wait()
    await service.kill()  # in the middle of intake: requests are in flight
    await asyncio.gather(*clients)

    accepted = {k: a[1]["id"] for k, a in answers.items() if a is not None and a[0] == 202}
    unanswered = [k for k in keys if answers.get(k) is None]
    assert len(accepted) >= 20
    assert unanswered  # the kill really landed mid-intake

    service = await start(running, procs.service(tmp_path, emulator.url), "/healthz")
    # Every job a client was told about is still there.
    for key, job_id in accepted.items():
        async with session.get(f"{service.url}/v1/jobs/{job_id}", headers=AUTH) as resp:
            assert resp.status == 200, key
    # A client retries what got no answer, with the same key: stored once either way.
    for key in unanswered:
        answer = await post(session, service.url, key, key)
        assert answer is not None
        assert answer[0] in (200, 202)

    jobs = await check_exactly_once(session, service.url, emulator.url, len(keys))
    assert set(accepted.values()) <= {j["id"] for j in jobs}


async def test_kill_9_during_submission_creates_nothing_twice(
    tmp_path: Path, session: aiohttp.ClientSession, running: list[procs.Process]
) -> None:
    # Every CI call takes 200 ms, so creates are in flight when the service dies.
    emulator = await start(
        running, procs.emulator(tmp_path, CIRELAY_EMULATOR_LATENCY_MS="200"), "/"
    )
    service = await start(
        running,
        procs.service(tmp_path, emulator.url, CIRELAY_SUBMITTER_ENABLED="false"),
        "/healthz",
    )
    for i in range(40):
        answer = await post(session, service.url, f"job{i}", f"key{i}")
        assert answer is not None
        assert answer[0] == 202
    await service.terminate()

    service = await start(running, procs.service(tmp_path, emulator.url), "/healthz")

    async def some_created() -> bool:
        return await procs.created_at_ci(session, emulator.url) >= 8

    await until(some_created, "the first creates at CI")
    await service.kill()
    _, in_doubt = leased_or_in_doubt(tmp_path / "cirelay.db")
    assert in_doubt > 0  # sends were in flight when it died

    service = await start(running, procs.service(tmp_path, emulator.url), "/healthz")
    await check_exactly_once(session, service.url, emulator.url, 40)


async def test_sigterm_finishes_in_flight_work_and_exits_0(
    tmp_path: Path, session: aiohttp.ClientSession, running: list[procs.Process]
) -> None:
    emulator = await start(
        running, procs.emulator(tmp_path, CIRELAY_EMULATOR_LATENCY_MS="300"), "/"
    )
    service = await start(
        running,
        procs.service(tmp_path, emulator.url, CIRELAY_SHUTDOWN_GRACE_SECONDS="10"),
        "/healthz",
    )
    for i in range(30):
        answer = await post(session, service.url, f"job{i}", f"key{i}")
        assert answer is not None
        assert answer[0] == 202

    async def some_created() -> bool:
        return await procs.created_at_ci(session, emulator.url) >= 4

    await until(some_created, "the first creates at CI")

    assert await service.terminate() == 0
    # In-flight sends finished within the grace period; nothing is left claimed or in doubt.
    assert leased_or_in_doubt(tmp_path / "cirelay.db") == (0, 0)
    log = (tmp_path / "service.log").read_text()
    assert "submitter_stopped" in log

    service = await start(running, procs.service(tmp_path, emulator.url), "/healthz")
    await check_exactly_once(session, service.url, emulator.url, 30)
