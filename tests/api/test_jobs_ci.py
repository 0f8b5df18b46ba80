"""`/v1/jobs` against the emulator: submission, cancel at CI (both states), retry of dead jobs.

The service app and the emulator app each run on a real socket; the app's own submitter is off
and a burst-mode Submitter over the app's queue and CI client drives submission deterministically.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from service.app import create_app
from service.appkeys import CI_CLIENT, METRICS, QUEUE, RATE_LIMITER, SETTINGS
from service.emulator.app import create_emulator_app
from service.queue import JobError
from service.settings import Settings
from service.submitter import Submitter, submission_xml
from tests.queue.rig import emulator_settings, service_settings, until
from tests.queue.samples import BUCKET, REGION, request_json

Client = TestClient[web.Request, web.Application]
JSON = {"Content-Type": "application/json"}


@pytest.fixture
async def emulator(
    settings: Settings, aiohttp_server: Callable[..., Awaitable[TestServer]]
) -> TestServer:
    # Media jobs run long enough for a cancel to catch them running.
    return await aiohttp_server(
        create_emulator_app(emulator_settings(settings, emulator_job_seconds=60))
    )


@pytest.fixture
async def api(
    settings: Settings,
    emulator: TestServer,
    aiohttp_client: Callable[..., Awaitable[Client]],
) -> Client:
    config = service_settings(settings, emulator, submitter_enabled=False)
    return await aiohttp_client(create_app(config))


def burst(api: Client) -> Submitter:
    app = api.app
    return Submitter(app[QUEUE], app[CI_CLIENT], app[RATE_LIMITER], app[SETTINGS], app[METRICS])


async def submit(api: Client, auth: dict[str, str], name: str = "demo") -> dict[str, Any]:
    resp = await api.post("/v1/jobs", data=request_json(name), headers={**auth, **JSON})
    assert resp.status == 202
    job: dict[str, Any] = await resp.json()
    await burst(api).run_burst()
    read = await api.get(f"/v1/jobs/{job['id']}", headers=auth)
    submitted: dict[str, Any] = await read.json()
    assert submitted["state"] == "submitted"
    return submitted


async def test_a_submitted_job_shows_its_ci_job(api: Client, auth: dict[str, str]) -> None:
    job = await submit(api, auth)
    assert job["ci_job_id"]
    assert job["attempts"] == 1
    assert job["submitted_at"].endswith("Z")
    at_ci = await api.app[CI_CLIENT].get(BUCKET, REGION, job["ci_job_id"])
    assert at_ci is not None
    assert at_ci.name == job["ci_name"]


@pytest.mark.parametrize("state", ["submitted", "running"])
async def test_a_job_at_ci_is_cancelled_through_ci(
    api: Client, auth: dict[str, str], state: str
) -> None:
    job = await submit(api, auth)
    if state == "running":
        assert await api.app[QUEUE].mark_running(job["id"])

    resp = await api.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
    assert resp.status == 200
    cancelled = await resp.json()
    assert cancelled["state"] == "cancelled"
    assert cancelled["finished_at"].endswith("Z")
    at_ci = await api.app[CI_CLIENT].get(BUCKET, REGION, job["ci_job_id"])
    assert at_ci is not None
    assert at_ci.state == "Cancel"

    again = await api.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
    assert again.status == 409


async def test_a_cancel_ci_refuses_for_an_ended_job_is_409(
    settings: Settings,
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    aiohttp_client: Callable[..., Awaitable[Client]],
    auth: dict[str, str],
) -> None:
    # Media jobs end at once here, so CI has finished the batch before we ask to cancel it.
    quick = await aiohttp_server(
        create_emulator_app(emulator_settings(settings, emulator_job_seconds=0.0))
    )
    api = await aiohttp_client(
        create_app(service_settings(settings, quick, submitter_enabled=False))
    )
    job = await submit(api, auth)
    ci = api.app[CI_CLIENT]

    async def ended() -> bool:
        at_ci = await ci.get(BUCKET, REGION, job["ci_job_id"])
        return at_ci is not None and at_ci.state == "Success"

    await until(ended, "the batch to end at CI")  # the emulator runs it in the background

    resp = await api.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
    assert resp.status == 409
    error = (await resp.json())["error"]
    assert error["code"] == "job_not_cancellable"
    assert error["details"][0]["code"] == "InvalidArgument"
    still = await (await api.get(f"/v1/jobs/{job['id']}", headers=auth)).json()
    assert still["state"] == "submitted"  # the batch's end is learned from CI, not assumed


async def test_a_cancel_ci_fails_is_502_and_leaves_the_job_alone(
    settings: Settings,
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    aiohttp_client: Callable[..., Awaitable[Client]],
    auth: dict[str, str],
) -> None:
    broken = await aiohttp_server(
        create_emulator_app(emulator_settings(settings, emulator_error_rate=1.0))
    )
    api = await aiohttp_client(
        create_app(service_settings(settings, broken, submitter_enabled=False))
    )
    resp = await api.post("/v1/jobs", data=request_json(), headers={**auth, **JSON})
    job = await resp.json()
    queue = api.app[QUEUE]
    # Submitted earlier, while CI still worked.
    await queue.claim("w", lease_seconds=30, now=time.time())
    await queue.record_submitted(job["id"], "w", "b" + "0" * 32, now=time.time())

    resp = await api.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
    assert resp.status == 502
    error = (await resp.json())["error"]
    assert error["code"] == "ci_error"
    assert error["details"][0]["code"] == "InternalError"
    still = await (await api.get(f"/v1/jobs/{job['id']}", headers=auth)).json()
    assert still["state"] == "submitted"


async def test_cancelling_an_in_doubt_queued_job_cancels_what_reached_ci(
    api: Client, auth: dict[str, str]
) -> None:
    resp = await api.post("/v1/jobs", data=request_json("doubt"), headers={**auth, **JSON})
    job = await resp.json()
    queue, ci = api.app[QUEUE], api.app[CI_CLIENT]
    # A worker sent the create and died before recording CI's answer.
    record = await queue.claim("dead-worker", lease_seconds=3600, now=time.time())
    assert record is not None
    await queue.begin_attempt(job["id"], "dead-worker", now=time.time(), lookup_after=0)
    created = await ci.create(BUCKET, REGION, submission_xml(api.app[SETTINGS], record))

    resp = await api.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
    assert resp.status == 200
    cancelled = await resp.json()
    assert cancelled["state"] == "cancelled"
    assert cancelled["ci_job_id"] == created.job_id
    at_ci = await ci.get(BUCKET, REGION, created.job_id)
    assert at_ci is not None
    assert at_ci.state == "Cancel"


async def test_a_retried_dead_job_reaches_ci(api: Client, auth: dict[str, str]) -> None:
    resp = await api.post("/v1/jobs", data=request_json("phoenix"), headers={**auth, **JSON})
    job = await resp.json()
    queue = api.app[QUEUE]
    await queue.claim("w", lease_seconds=30, now=time.time())
    error = JobError("InvalidArgument", "bad queue")
    await queue.bury(job["id"], "w", error=error, now=time.time())

    resp = await api.post(f"/v1/jobs/{job['id']}/retry", headers=auth)
    assert resp.status == 200
    assert (await resp.json())["state"] == "queued"
    await burst(api).run_burst()

    done = await (await api.get(f"/v1/jobs/{job['id']}", headers=auth)).json()
    assert done["state"] == "submitted"
    assert done["attempts"] == 1
    assert done["ci_job_id"]


async def test_the_apps_own_workers_submit_what_is_posted(
    settings: Settings,
    emulator: TestServer,
    aiohttp_client: Callable[..., Awaitable[Client]],
    auth: dict[str, str],
) -> None:
    api = await aiohttp_client(create_app(service_settings(settings, emulator)))
    resp = await api.post("/v1/jobs", data=request_json("live"), headers={**auth, **JSON})
    job = await resp.json()
    queue = api.app[QUEUE]
    while (stored := await queue.get(job["id"])) is not None and stored.state == "queued":
        await queue.wait_changed(0.05)
    assert stored is not None
    assert stored.state == "submitted"
