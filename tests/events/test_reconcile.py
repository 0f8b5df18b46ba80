"""The reconciler against the emulator: the service and the emulator on real sockets, jobs submitted
by the real submitter, callbacks delivered (or dropped) by the emulator, the reconciler driven pass
by pass with a clock the test moves past the grace period."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, unused_port

from service.app import create_app
from service.appkeys import (
    CI_CLIENT,
    EVENT_PIPELINE,
    EVENT_STORE,
    METRICS,
    QUEUE,
    SETTINGS,
    STORAGE,
)
from service.ci.client import CIClient
from service.ci.signing import Credentials
from service.emulator.app import create_emulator_app
from service.emulator.jobs import Engine
from service.emulator.keys import ENGINE
from service.events.reconcile import CALLS_PER_PASS, PAGE_SIZE, Reconciler
from service.queue import JobRecord
from service.tokens import callback_token
from tests.events.support import API_TOKEN, STATIC_TOKEN, events_settings, sample

SECRET_ID = "AKIDreconciletest"
SECRET_KEY = "reconcile-test-key"
BUCKET = "media-1250000000"
REGION = "ap-chongqing"
GRACE = 60.0
WAIT = 20.0  # a safety net against hangs, never what a test measures
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}

Client = TestClient[web.Request, web.Application]


class Clock:
    """Real time plus an offset the test moves forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@dataclass
class Rig:
    client: Client
    engine: Engine
    clock: Clock
    reconciler: Reconciler

    @property
    def app(self) -> web.Application:
        return self.client.app

    async def submit(self, *, objects: str = "Prefix", callback_format: str = "XML") -> JobRecord:
        """POST a batch job and wait until the submitter created it at CI."""
        operation: dict[str, Any] = {
            "Tag": "Transcode",
            "QueueId": "p893bcda225bf4945a378da6662e81a89",
            "JobParam": {"TemplateId": "t1460606b9752148c4ab182f55163ba7cd"},
            "Output": {
                "Region": REGION,
                "Bucket": BUCKET,
                "Object": "out/${InventoryTriggerJobId}/${InputName}.mp4",
            },
            "CallBackFormat": callback_format,
        }
        source = {"Prefix": "in/"} if objects == "Prefix" else {"Object": "in/a.mp4"}
        request = {"Name": "recon", "Type": "Job", "Input": source, "Operation": operation}
        resp = await self.client.post("/v1/jobs", json={"Request": request}, headers=AUTH)
        assert resp.status == 202, await resp.text()
        job_id = (await resp.json())["id"]
        return await self.wait_job(job_id, lambda job: job.ci_job_id is not None)

    async def wait_job(self, job_id: str, done: Callable[[JobRecord], bool]) -> JobRecord:
        async with asyncio.timeout(WAIT):
            while True:
                job = await self.app[QUEUE].get(job_id)
                assert job is not None
                if done(job):
                    return job
                await asyncio.sleep(0.02)

    async def settle(self) -> None:
        """Every media job at the emulator ended and its callback was delivered or dropped."""
        async with asyncio.timeout(WAIT):
            await self.engine.wait_idle()

    async def reconcile(self, *, past_grace: bool) -> None:
        self.clock.offset = GRACE + 1 if past_grace else 0.0
        await self.reconciler.reconcile_once()

    async def job(self, job_id: str) -> JobRecord:
        job = await self.app[QUEUE].get(job_id)
        assert job is not None
        return job

    async def events(self, job_id: str) -> list[dict[str, Any]]:
        return await self.app[EVENT_STORE].for_job(job_id)

    def metric(self, name: str, **labels: str) -> float:
        return sample(self.app[METRICS].registry, name, **labels)


RigFactory = Callable[..., Awaitable[Rig]]


@pytest.fixture
async def make_rig(
    tmp_path: Path, storage_url: str, aiohttp_client: Callable[..., Awaitable[Client]]
) -> AsyncIterator[RigFactory]:
    runners: list[web.AppRunner] = []

    async def factory(**emulator: Any) -> Rig:
        emulator_settings = events_settings(tmp_path).replace(
            **{
                "emulator_credentials": f"{SECRET_ID}:{SECRET_KEY}",
                "emulator_job_seconds": 0.02,
                "emulator_objects_per_prefix": 3,
                "emulator_seed": 11,
                "emulator_callback_retry_seconds": 0.01,
                **emulator,
            }
        )
        emulator_app = create_emulator_app(emulator_settings)
        runner = web.AppRunner(emulator_app)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        emulator_port = runner.addresses[0][1]
        port = unused_port()
        settings = events_settings(tmp_path, CIRELAY_DATABASE_URL=storage_url).replace(
            public_url=f"http://127.0.0.1:{port}",
            ci_endpoint=f"http://127.0.0.1:{emulator_port}",
            ci_secret_id=SECRET_ID,
            ci_secret_key=SECRET_KEY,
            ci_bucket=BUCKET,
            ci_region=REGION,
            submitter_enabled=True,
            poll_interval_seconds=0.02,
            ci_rate_limit=1000.0,
        )
        client = await aiohttp_client(TestServer(create_app(settings), port=port))
        clock = Clock()
        app = client.app
        reconciler = Reconciler(
            app[EVENT_PIPELINE],
            app[CI_CLIENT],
            app[STORAGE].leases,
            app[METRICS],
            interval=1.0,
            grace=GRACE,
            concurrency=4,
            clock=clock,
        )
        return Rig(client, emulator_app[ENGINE], clock, reconciler)

    yield factory
    for runner in runners:
        await runner.cleanup()


def counts(events: list[dict[str, Any]]) -> dict[tuple[str, str], int]:
    found: dict[tuple[str, str], int] = {}
    for event in events:
        key = (event["event_type"], event["source"])
        found[key] = found.get(key, 0) + 1
    return found


async def test_callbacks_that_arrive_make_polling_unnecessary(make_rig: RigFactory) -> None:
    rig = await make_rig()
    job = await rig.submit(callback_format="JSON")
    await rig.settle()
    events = await rig.events(job.id)
    assert counts(events) == {("TaskFinish", "http"): 3}
    assert {e["format"] for e in events} == {"json"}
    assert {(e["cirelay_job_id"], e["batch_id"]) for e in events} == {(job.id, job.ci_job_id)}
    assert (await rig.job(job.id)).state == "running"

    await rig.reconcile(past_grace=False)
    events = await rig.events(job.id)
    assert counts(events) == {("TaskFinish", "http"): 3, ("BatchFinish", "poll"): 1}
    [batch_finish] = [e for e in events if e["event_type"] == "BatchFinish"]
    assert batch_finish["job_id"] == job.ci_job_id
    assert batch_finish["state"] == "Success"
    assert events[-1]["event_type"] == "BatchFinish"  # it comes last
    assert (await rig.job(job.id)).state == "succeeded"
    assert rig.metric("cirelay_events_reconciled_total") == 0
    assert rig.metric("cirelay_jobs_finished_total", tag="Transcode", state="succeeded") == 1


async def test_dropped_callbacks_are_rebuilt_after_grace_and_late_ones_are_duplicates(
    make_rig: RigFactory,
) -> None:
    rig = await make_rig(emulator_drop_rate=1.0)
    job = await rig.submit()
    await rig.settle()
    assert await rig.events(job.id) == []

    # Within the grace period the callbacks may still come: nothing is made up, the job waits.
    await rig.reconcile(past_grace=False)
    assert await rig.events(job.id) == []
    assert (await rig.job(job.id)).state == "submitted"

    await rig.reconcile(past_grace=True)
    events = await rig.events(job.id)
    assert counts(events) == {("TaskFinish", "poll"): 3, ("BatchFinish", "poll"): 1}
    assert all(e["format"] == "xml" and e["state"] == "Success" for e in events)
    assert {(e["cirelay_job_id"], e["batch_id"]) for e in events} == {(job.id, job.ci_job_id)}
    assert (await rig.job(job.id)).state == "succeeded"
    assert rig.metric("cirelay_events_reconciled_total") == 3
    assert (
        rig.metric(
            "cirelay_events_received_total", source="poll", format="xml", event_type="TaskFinish"
        )
        == 3
    )

    # The callback CI would have sent, arriving late: a duplicate of the rebuilt event.
    media_id = events[0]["job_id"]
    page = await rig.app[CI_CLIENT].get_media_jobs(BUCKET, REGION, [media_id])
    late = {"Response": {"EventName": "TaskFinish", "JobsDetail": list(page.jobs)}}
    token = callback_token(rig.app[SETTINGS].callback_key, job.id)
    resp = await rig.client.post(
        f"/v1/callbacks/{token}",
        data=json.dumps(late),
        headers={"Content-Type": "application/json"},
    )
    assert resp.status == 200
    assert await resp.json() == {"event_ids": [events[0]["event_id"]], "new": 0, "duplicates": 1}

    # BatchFinish is emitted once, even if the ended batch is looked at again.
    await rig.reconciler.reconcile_job(job)
    await rig.reconcile(past_grace=True)
    assert counts(await rig.events(job.id))[("BatchFinish", "poll")] == 1
    assert rig.metric("cirelay_jobs_finished_total", tag="Transcode", state="succeeded") == 1


async def test_a_batch_with_some_callbacks_missing_waits_for_them(make_rig: RigFactory) -> None:
    rig = await make_rig(emulator_drop_rate=0.5)
    job = await rig.submit()
    await rig.settle()
    delivered = len(await rig.events(job.id))
    assert 0 < delivered < 3  # the seed drops some, not all

    await rig.reconcile(past_grace=False)
    assert (await rig.job(job.id)).state == "running"
    await rig.reconcile(past_grace=True)
    events = await rig.events(job.id)
    assert counts(events) == {
        ("TaskFinish", "http"): delivered,
        ("TaskFinish", "poll"): 3 - delivered,
        ("BatchFinish", "poll"): 1,
    }
    assert len({e["job_id"] for e in events if e["event_type"] == "TaskFinish"}) == 3
    assert (await rig.job(job.id)).state == "succeeded"


async def test_failed_media_jobs_end_the_job_failed(make_rig: RigFactory) -> None:
    rig = await make_rig(emulator_failure_rate=1.0)
    job = await rig.submit(objects="Object")
    await rig.settle()
    await rig.reconcile(past_grace=False)
    events = await rig.events(job.id)
    assert [(e["event_type"], e["state"]) for e in events] == [
        ("TaskFinish", "Failed"),
        ("BatchFinish", "Failed"),
    ]
    assert events[0]["code"] not in (None, "Success")
    assert (await rig.job(job.id)).state == "failed"
    assert rig.metric("cirelay_jobs_finished_total", tag="Transcode", state="failed") == 1


async def test_a_cancelled_batch_ends_the_job_cancelled(make_rig: RigFactory) -> None:
    rig = await make_rig()
    rig.engine.pause()  # media jobs stay Submitted, so the cancel finds them unstarted
    job = await rig.submit()
    assert job.ci_job_id is not None
    await rig.app[CI_CLIENT].cancel(BUCKET, REGION, job.ci_job_id)
    rig.engine.resume()
    await rig.settle()
    await rig.reconcile(past_grace=True)
    events = await rig.events(job.id)
    assert events[-1]["event_type"] == "BatchFinish"
    assert events[-1]["state"] == "Cancel"
    assert (await rig.job(job.id)).state == "cancelled"
    assert rig.metric("cirelay_jobs_finished_total", tag="Transcode", state="cancelled") == 1


async def test_events_without_a_job_token_are_linked_when_the_batch_is_polled(
    make_rig: RigFactory,
) -> None:
    rig = await make_rig(emulator_drop_rate=1.0)
    job = await rig.submit()
    await rig.settle()
    # The same callbacks arriving through a hand-configured URL (the static token).
    listing = await rig.app[CI_CLIENT].list_media_jobs(
        BUCKET, REGION, tag="Transcode", inventory_trigger_job_id=job.ci_job_id or "", size=100
    )
    assert len(listing.jobs) == 3
    for detail in listing.jobs:
        body = {"Response": {"EventName": "TaskFinish", "JobsDetail": [detail]}}
        resp = await rig.client.post(f"/v1/callbacks/{STATIC_TOKEN}", json=body)
        assert resp.status == 200
    assert await rig.events(job.id) == []  # nothing said which job they belong to

    await rig.reconcile(past_grace=False)
    events = await rig.events(job.id)
    assert counts(events) == {("TaskFinish", "http"): 3, ("BatchFinish", "poll"): 1}
    assert {e["batch_id"] for e in events} == {job.ci_job_id}
    assert (await rig.job(job.id)).state == "succeeded"


async def test_unknown_batches_and_unreachable_ci_leave_jobs_alone(
    make_rig: RigFactory, caplog: pytest.LogCaptureFixture
) -> None:
    rig = await make_rig()
    job = await rig.submit(objects="Object")
    await rig.settle()

    # CI does not know the batch: nothing is decided from that.
    unknown = dataclasses.replace(job, ci_job_id="bunknown0000000000000000000000000")
    await rig.reconciler.reconcile_job(unknown)
    assert counts(await rig.events(job.id)) == {("TaskFinish", "http"): 1}

    # CI unreachable: the pass logs and gives up on this tick; the job is untouched.
    async with aiohttp.ClientSession() as session:
        offline = CIClient(
            session,
            Credentials(SECRET_ID, SECRET_KEY),
            endpoint=f"http://127.0.0.1:{unused_port()}",
            timeout=1.0,
        )
        app = rig.app
        broken = Reconciler(
            app[EVENT_PIPELINE],
            offline,
            app[STORAGE].leases,
            app[METRICS],
            interval=1.0,
            grace=GRACE,
            concurrency=1,
        )
        await broken.reconcile_once()
    assert (await rig.job(job.id)).state == "running"
    assert counts(await rig.events(job.id)) == {("TaskFinish", "http"): 1}


def ci_calls(rig: Rig, operation: str) -> float:
    return rig.metric("cirelay_ci_requests_total", operation=operation, status="200")


async def test_a_pass_asks_ci_only_for_what_is_new_and_resumes_where_it_stopped(
    make_rig: RigFactory,
) -> None:
    rig = await make_rig(emulator_objects_per_prefix=250)
    rig.engine.pause()  # the batch waits, Submitted, with its 250 media jobs listed at CI
    job = await rig.submit()

    await rig.reconcile(past_grace=False)  # the batch, then its 3 pages
    assert (ci_calls(rig, "get"), ci_calls(rig, "list_media_jobs")) == (1, 3)

    # A fresh reconciler (as after a restart) carries on from the recorded progress: the batch
    # and its last page again, nothing before it.
    app = rig.app
    restarted = Reconciler(
        app[EVENT_PIPELINE],
        app[CI_CLIENT],
        app[STORAGE].leases,
        app[METRICS],
        interval=1.0,
        grace=GRACE,
        concurrency=4,
        clock=rig.clock,
    )
    await restarted.reconcile_once()
    assert (ci_calls(rig, "get"), ci_calls(rig, "list_media_jobs")) == (2, 4)

    rig.engine.resume()
    await rig.settle()
    await rig.reconcile(past_grace=False)  # ended: the last page once more, then finished
    assert (ci_calls(rig, "get"), ci_calls(rig, "list_media_jobs")) == (3, 5)
    assert ci_calls(rig, "get_media_jobs") == 0
    events = await rig.events(job.id)
    assert counts(events) == {("TaskFinish", "http"): 250, ("BatchFinish", "poll"): 1}
    assert (await rig.job(job.id)).state == "succeeded"


async def test_many_missing_callbacks_are_swept_by_listing_the_batch_once_more(
    make_rig: RigFactory,
) -> None:
    rig = await make_rig(emulator_objects_per_prefix=150, emulator_drop_rate=1.0)
    job = await rig.submit()
    await rig.settle()
    await rig.reconcile(past_grace=False)  # listed (2 pages), all 150 missing: wait for grace
    assert await rig.events(job.id) == []
    assert ci_calls(rig, "list_media_jobs") == 2

    await rig.reconcile(past_grace=True)  # 150 by id would be 15 calls: 2 pages instead
    assert ci_calls(rig, "list_media_jobs") == 4
    assert ci_calls(rig, "get_media_jobs") == 0
    events = await rig.events(job.id)
    assert counts(events) == {("TaskFinish", "poll"): 150, ("BatchFinish", "poll"): 1}
    assert events[-1]["event_type"] == "BatchFinish"
    assert (await rig.job(job.id)).state == "succeeded"


async def test_an_event_stored_between_a_pass_linking_and_checking_ends_attached(
    make_rig: RigFactory,
) -> None:
    """The race of issue 12: a TaskFinish without a job token (TDMQ, static token) stored after
    a pass recorded and linked the batch's media jobs, before it checked them."""
    rig = await make_rig(emulator_drop_rate=1.0)
    job = await rig.submit()
    await rig.settle()
    listing = await rig.app[CI_CLIENT].list_media_jobs(
        BUCKET, REGION, tag="Transcode", inventory_trigger_job_id=job.ci_job_id or "", size=100
    )
    first, *others = listing.jobs

    pipeline = rig.app[EVENT_PIPELINE]
    record_listing = pipeline.record_listing

    async def deliver_after_recording(progress: Any, media_job_ids: list[str]) -> set[str]:
        missing = await record_listing(progress, media_job_ids)
        if media_job_ids:  # the batch's page is recorded and linked; the check comes next
            body = {"Response": {"EventName": "TaskFinish", "JobsDetail": [first]}}
            resp = await rig.client.post(f"/v1/callbacks/{STATIC_TOKEN}", json=body)
            assert resp.status == 200
        return missing

    pipeline.record_listing = deliver_after_recording  # type: ignore[method-assign]
    try:
        await rig.reconcile(past_grace=False)
    finally:
        pipeline.record_listing = record_listing  # type: ignore[method-assign]
    # Two media jobs still lack an event within the grace: no BatchFinish yet.
    assert counts(await rig.events(job.id)) == {("TaskFinish", "http"): 1}
    assert (await rig.job(job.id)).state == "running"

    for detail in others:  # the rest come late, after the pass, through the same token
        body = {"Response": {"EventName": "TaskFinish", "JobsDetail": [detail]}}
        resp = await rig.client.post(f"/v1/callbacks/{STATIC_TOKEN}", json=body)
        assert resp.status == 200
    await rig.reconcile(past_grace=False)
    events = await rig.events(job.id)
    assert counts(events) == {("TaskFinish", "http"): 3, ("BatchFinish", "poll"): 1}
    assert events[-1]["event_type"] == "BatchFinish"
    assert {(e["cirelay_job_id"], e["batch_id"]) for e in events} == {(job.id, job.ci_job_id)}
    assert (await rig.job(job.id)).state == "succeeded"

    # A redelivery after the end (Pulsar, a late callback) is a duplicate; a new event of a media
    # job of the finished batch is attached as it is stored.
    body = {"Response": {"EventName": "TaskFinish", "JobsDetail": [{**first, "State": "Failed"}]}}
    resp = await rig.client.post(f"/v1/callbacks/{STATIC_TOKEN}", json=body)
    assert (await resp.json())["new"] == 1
    assert len(await rig.events(job.id)) == 5


async def test_a_pass_reads_at_most_its_share_of_pages_and_the_next_carries_on(
    make_rig: RigFactory,
) -> None:
    pages = CALLS_PER_PASS + 5
    rig = await make_rig(emulator_objects_per_prefix=pages * PAGE_SIZE)
    rig.engine.pause()
    await rig.submit()
    await rig.reconcile(past_grace=False)
    assert (ci_calls(rig, "get"), ci_calls(rig, "list_media_jobs")) == (1, CALLS_PER_PASS)
    await rig.reconcile(past_grace=False)  # the 5 pages left, the last one among them
    assert (ci_calls(rig, "get"), ci_calls(rig, "list_media_jobs")) == (2, pages)
    await rig.reconcile(past_grace=False)  # only the last page again
    assert (ci_calls(rig, "get"), ci_calls(rig, "list_media_jobs")) == (3, pages + 1)


async def test_a_callback_under_another_jobs_token_is_refused_once_ci_listed_the_media_job(
    make_rig: RigFactory,
) -> None:
    rig = await make_rig(emulator_drop_rate=1.0)
    victim, other = await rig.submit(), await rig.submit()
    await rig.settle()
    await rig.reconcile(past_grace=False)  # lists both batches' media jobs at CI
    assert victim.ci_job_id is not None
    page = await rig.app[CI_CLIENT].list_media_jobs(
        BUCKET, REGION, tag="Transcode", inventory_trigger_job_id=victim.ci_job_id
    )
    forged = {"Response": {"EventName": "TaskFinish", "JobsDetail": [page.jobs[0]]}}
    token = callback_token(rig.app[SETTINGS].callback_key, other.id)
    resp = await rig.client.post(
        f"/v1/callbacks/{token}",
        data=json.dumps(forged),
        headers={"Content-Type": "application/json"},
    )
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "wrong_batch"
    assert await rig.events(other.id) == []
    assert rig.metric("cirelay_events_rejected_total", source="http", reason="wrong_batch") == 1


async def test_an_event_taken_under_another_jobs_token_moves_to_its_job_once_ci_lists_it(
    make_rig: RigFactory,
) -> None:
    rig = await make_rig(emulator_drop_rate=1.0)
    victim, other = await rig.submit(), await rig.submit()
    await rig.settle()
    assert victim.ci_job_id is not None
    page = await rig.app[CI_CLIENT].list_media_jobs(
        BUCKET, REGION, tag="Transcode", inventory_trigger_job_id=victim.ci_job_id
    )
    forged = {"Response": {"EventName": "TaskFinish", "JobsDetail": [page.jobs[0]]}}
    token = callback_token(rig.app[SETTINGS].callback_key, other.id)
    # Before the reconciler saw the listing nothing tells the media job's batch: taken.
    resp = await rig.client.post(
        f"/v1/callbacks/{token}",
        data=json.dumps(forged),
        headers={"Content-Type": "application/json"},
    )
    assert resp.status == 200
    assert len(await rig.events(other.id)) == 1

    await rig.reconcile(past_grace=False)
    assert await rig.events(other.id) == []
    [moved] = await rig.events(victim.id)
    assert (moved["job_id"], moved["batch_id"]) == (page.jobs[0]["JobId"], victim.ci_job_id)
    assert rig.metric("cirelay_events_rejected_total", source="http", reason="wrong_batch") == 1
