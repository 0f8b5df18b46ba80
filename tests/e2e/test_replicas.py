"""Three `cirelay serve` replicas on one PostgreSQL, as real processes, one of them `kill -9`ed.

The emulator duplicates and drops callbacks and loses answers to create calls. Jobs are spread over
the replicas, and some are posted again to another replica under the same Idempotency-Key. Midway
one replica is killed with SIGKILL and started again. Throughout, a feed poller reads
`GET /v1/events` from whichever replica is up. Done when every job ends in the state CI reports
with exactly its events, CI holds exactly one batch per job, and the poller saw every event once.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest

from service.ci.client import CIClient
from service.ci.errors import CIRetryableError
from service.ci.signing import Credentials
from tests.e2e import procs
from tests.e2e.procs import AUTH
from tests.queue.rig import SECRET_ID, SECRET_KEY
from tests.queue.samples import BUCKET, REGION

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

REPLICAS = 3
JOBS = 30
RESENT = 6  # posted again, to another replica, under the same key
OBJECTS_PER_BATCH = 2
DEADLINE = 120.0  # a hang guard, not what is measured
END_STATES = {"Success": "succeeded", "Failed": "failed", "Cancel": "cancelled"}
FINAL = {"succeeded", "failed", "cancelled", "dead"}


def batch_request(index: int) -> dict[str, Any]:
    return {
        "Request": {
            "Name": f"replicas-{index}",
            "Type": "Job",
            "Input": {"Prefix": f"in/{index}/"},
            "Operation": {
                "Tag": "Transcode",
                "QueueId": "p893bcda225bf4945a378da6662e81a89",
                "JobParam": {"TemplateId": "t1460606b9752148c4ab182f55163ba7cd"},
                "Output": {
                    "Region": REGION,
                    "Bucket": BUCKET,
                    "Object": "out/${InventoryTriggerJobId}/${InputName}.mp4",
                },
                "CallBackFormat": "JSON" if index % 2 else "XML",
            },
        }
    }


def replica(tmp: Path, index: int, emulator_url: str, database_url: str) -> procs.Process:
    proc = procs.service(
        tmp,
        emulator_url,
        CIRELAY_DATABASE_URL=database_url,
        CIRELAY_DATABASE_POOL_SIZE="4",
        CIRELAY_RECONCILE_SECONDS="0.3",
        # Long enough that no delivered callback is mistaken for a missing one.
        CIRELAY_RECONCILE_GRACE_SECONDS="3",
    )
    proc.name = f"replica-{index}"
    proc.log = tmp / f"replica-{index}.log"
    # CI calls back the replica that submitted the job: its own address is its public URL.
    proc.env["CIRELAY_PUBLIC_URL"] = proc.url
    return proc


@pytest.fixture
async def running() -> AsyncIterator[list[procs.Process]]:
    started: list[procs.Process] = []
    yield started
    for proc in started:
        await proc.stop()


class FeedPoller:
    """Reads the feed from whichever replica answers, keeping every event id it was given."""

    def __init__(self, session: aiohttp.ClientSession, replicas: list[procs.Process]) -> None:
        self._session = session
        self._replicas = itertools.cycle(replicas)
        self.cursor = ""
        self.seen: list[str] = []

    async def poll_once(self) -> int:
        target = next(self._replicas)
        params = {"limit": "100", **({"after": self.cursor} if self.cursor else {})}
        try:
            async with self._session.get(
                target.url + "/v1/events", params=params, headers=AUTH
            ) as resp:
                if resp.status != 200:
                    return 0
                page = await resp.json()
        except aiohttp.ClientError:
            return 0  # that replica is down: the next poll asks another one
        self.seen += [e["event_id"] for e in page["events"]]
        self.cursor = page["next_cursor"]
        return len(page["events"])

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if await self.poll_once() == 0:
                await asyncio.sleep(0.05)  # nothing new: the feed has no push to wait on


T = TypeVar("T")


async def answered(call: Callable[[], Awaitable[T]]) -> T:
    """The emulator's faults hit the test's own CI calls too (a 500 on a listing): ask again."""
    while True:
        try:
            return await call()
        except CIRetryableError:
            continue


async def post_job(
    session: aiohttp.ClientSession, url: str, index: int, key: str
) -> tuple[int, dict[str, Any]]:
    async with session.post(
        url + "/v1/jobs", json=batch_request(index), headers={**AUTH, "Idempotency-Key": key}
    ) as resp:
        return resp.status, await resp.json()


async def test_three_replicas_one_killed_every_job_and_event_exactly_once(
    tmp_path: Path, postgres_url: str, running: list[procs.Process]
) -> None:
    emulator = procs.emulator(
        tmp_path,
        CIRELAY_EMULATOR_WORKERS="8",
        CIRELAY_EMULATOR_OBJECTS_PER_PREFIX=str(OBJECTS_PER_BATCH),
        CIRELAY_EMULATOR_DUPLICATE_RATE="0.3",
        CIRELAY_EMULATOR_DROP_RATE="0.2",
        CIRELAY_EMULATOR_LOST_RESPONSE_RATE="0.2",
        CIRELAY_EMULATOR_SEED="11",
    )
    running.append(emulator)
    await emulator.start("/")
    replicas = [replica(tmp_path, i, emulator.url, postgres_url) for i in range(REPLICAS)]
    running.extend(replicas)
    # Started together: their migrations race for the advisory lock.
    await asyncio.gather(*(r.start("/healthz") for r in replicas))

    async with aiohttp.ClientSession() as session:
        poller = FeedPoller(session, replicas)
        stop = asyncio.Event()
        polling = asyncio.create_task(poller.run(stop))

        jobs: dict[str, str] = {}  # job id -> idempotency key
        for index in range(JOBS):
            key = f"key-{index}"
            status, view = await post_job(session, replicas[index % REPLICAS].url, index, key)
            assert status == 202, view
            jobs[view["id"]] = key
            if index == JOBS // 2:
                # Midway: SIGKILL, then the same replica again on its port and database.
                await replicas[1].kill()
                await replicas[1].start("/healthz")
        for index in range(RESENT):
            # Another replica than the first post's, same key: the same job, answered 200.
            target = replicas[(index + 1) % REPLICAS].url
            status, view = await post_job(session, target, index, f"key-{index}")
            assert status == 200, view
            assert jobs[view["id"]] == f"key-{index}"

        views: dict[str, dict[str, Any]] = {}
        async with asyncio.timeout(DEADLINE):
            while len(views) < JOBS:
                for job_id in jobs.keys() - views.keys():
                    async with session.get(
                        f"{replicas[0].url}/v1/jobs/{job_id}", headers=AUTH
                    ) as resp:
                        view = await resp.json()
                    if view["state"] in FINAL:
                        views[job_id] = view
                await asyncio.sleep(0.1)

        ci = CIClient(session, Credentials(SECRET_ID, SECRET_KEY), endpoint=emulator.url, timeout=5)
        for job_id, view in views.items():
            batch = await answered(functools.partial(ci.get, BUCKET, REGION, view["ci_job_id"]))
            assert batch is not None
            assert view["state"] == END_STATES[batch.state], view
            listing = await answered(
                functools.partial(
                    ci.list_media_jobs,
                    BUCKET,
                    REGION,
                    tag="Transcode",
                    inventory_trigger_job_id=view["ci_job_id"],
                    size=100,
                )
            )
            media = {d["JobId"]: d["State"] for d in listing.jobs}
            tasks = [e for e in view["events"] if e["event_type"] == "TaskFinish"]
            assert sorted(e["job_id"] for e in tasks) == sorted(media)
            for event in tasks:
                assert event["state"] == media[event["job_id"]]
                assert event["cirelay_job_id"] == job_id
            assert [e["event_type"] for e in view["events"]].count("BatchFinish") == 1
            assert view["events"][-1]["event_type"] == "BatchFinish"

        # CI holds exactly one batch per job, whatever answers were lost.
        names = await procs.names_at_ci(session, emulator.url)
        assert len(names) == len(set(names)) == JOBS
        assert set(names) == {view["ci_name"] for view in views.values()}
        assert await procs.created_at_ci(session, emulator.url) == JOBS

        # Every event is in the feed, and the poller (which ran throughout, across the kill)
        # was given each exactly once.
        every = sorted(e["event_id"] for view in views.values() for e in view["events"])
        while await poller.poll_once() or await poller.poll_once():
            pass
        stop.set()
        await polling
        assert len(poller.seen) == len(set(poller.seen))
        assert sorted(poller.seen) == every
