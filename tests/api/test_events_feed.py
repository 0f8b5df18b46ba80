"""`GET /v1/events`: a stable-cursor feed of stored events, with job and type filters, on every
storage backend."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from service.app import create_app
from service.appkeys import QUEUE, SETTINGS
from service.tokens import callback_token
from tests.events.support import (
    API_TOKEN,
    FIXTURES,
    STATIC_TOKEN,
    events_settings,
    submitted_job,
    task_finish_json,
    task_finish_xml,
)

Client = TestClient[web.Request, web.Application]
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


@pytest.fixture
async def client(
    tmp_path: Path, storage_url: str, aiohttp_client: Callable[..., Awaitable[Client]]
) -> Client:
    settings = events_settings(tmp_path, CIRELAY_DATABASE_URL=storage_url)
    return await aiohttp_client(create_app(settings))


async def post(client: Client, token: str, body: bytes) -> None:
    resp = await client.post(f"/v1/callbacks/{token}", data=body)
    assert resp.status == 200, await resp.text()


async def job_token(client: Client) -> tuple[str, str]:
    job = await submitted_job(client.app[QUEUE])
    return job.id, callback_token(client.app[SETTINGS].callback_key, job.id)


async def feed(client: Client, **params: Any) -> dict[str, Any]:
    resp = await client.get("/v1/events", params=params, headers=AUTH)
    assert resp.status == 200, await resp.text()
    page: dict[str, Any] = await resp.json()
    return page


async def test_the_feed_needs_the_bearer_token(client: Client) -> None:
    resp = await client.get("/v1/events")
    assert resp.status == 401
    assert (await resp.json())["error"]["code"] == "unauthorized"


async def test_empty_feed_gives_a_usable_cursor(client: Client) -> None:
    page = await feed(client)
    assert page["events"] == []
    await post(client, STATIC_TOKEN, task_finish_xml("j-first"))
    page = await feed(client, after=page["next_cursor"])
    assert [e["job_id"] for e in page["events"]] == ["j-first"]


async def test_paging_sees_every_event_once_in_order(client: Client) -> None:
    _, token = await job_token(client)
    for i in range(7):
        body = task_finish_xml(f"j-{i}") if i % 2 else task_finish_json(f"j-{i}")
        await post(client, token, body)
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        page = await feed(client, limit=3, **({"after": cursor} if cursor else {}))
        seen += [e["job_id"] for e in page["events"]]
        if not page["events"]:
            assert page["next_cursor"] == cursor  # nothing new: same place
            break
        cursor = page["next_cursor"]
    assert seen == [f"j-{i}" for i in range(7)]


async def test_cursor_is_stable_while_events_keep_arriving(client: Client) -> None:
    await post(client, STATIC_TOKEN, task_finish_xml("j-a"))
    await post(client, STATIC_TOKEN, task_finish_xml("j-b"))
    page = await feed(client)
    assert [e["job_id"] for e in page["events"]] == ["j-a", "j-b"]
    await post(client, STATIC_TOKEN, task_finish_xml("j-c"))
    await post(client, STATIC_TOKEN, task_finish_xml("j-a"))  # a duplicate adds nothing
    page = await feed(client, after=page["next_cursor"])
    assert [e["job_id"] for e in page["events"]] == ["j-c"]


async def test_job_id_filter_matches_our_id_or_cis(client: Client) -> None:
    job_a, token_a = await job_token(client)
    job_b, token_b = await job_token(client)
    await post(client, token_a, task_finish_xml("m-1"))
    await post(client, token_b, task_finish_xml("m-2"))
    await post(client, token_a, task_finish_json("m-3"))
    await post(client, STATIC_TOKEN, task_finish_xml("m-4"))
    ours = await feed(client, job_id=job_a)
    assert [e["job_id"] for e in ours["events"]] == ["m-1", "m-3"]
    assert {e["cirelay_job_id"] for e in ours["events"]} == {job_a}
    by_ci = await feed(client, job_id="m-2")
    assert [e["cirelay_job_id"] for e in by_ci["events"]] == [job_b]
    assert [e["job_id"] for e in (await feed(client, job_id="m-4"))["events"]] == ["m-4"]
    assert (await feed(client, job_id="nobody"))["events"] == []


async def test_type_filter(client: Client) -> None:
    await post(client, STATIC_TOKEN, task_finish_xml("m-1"))
    await post(client, STATIC_TOKEN, (FIXTURES / "workflow_finish.xml").read_bytes())
    workflows = await feed(client, type="WorkflowFinish")
    assert [e["event_type"] for e in workflows["events"]] == ["WorkflowFinish"]
    tasks = await feed(client, type="TaskFinish")
    assert [e["job_id"] for e in tasks["events"]] == ["m-1"]
    assert (await feed(client, type="BatchFinish"))["events"] == []


async def test_filters_and_cursor_combine(client: Client) -> None:
    job, token = await job_token(client)
    for i in range(4):
        await post(client, token, task_finish_xml(f"m-{i}"))
        await post(client, STATIC_TOKEN, task_finish_xml(f"other-{i}"))
    first = await feed(client, job_id=job, type="TaskFinish", limit=2)
    rest = await feed(client, job_id=job, type="TaskFinish", after=first["next_cursor"])
    assert [e["job_id"] for e in first["events"] + rest["events"]] == [f"m-{i}" for i in range(4)]


@pytest.mark.parametrize("backend", ["sqlite"])  # refused before storage is asked
@pytest.mark.parametrize(
    "params",
    [
        {"after": "not-a-cursor"},
        {"after": "ZXYxOi0x"},  # "ev1:-1"
        {"after": "ZXYxOjEyMzQ1Njc4OTAxMjM0NTY3ODkw"},  # a number beyond 64 bits
        {"limit": "0"},
        {"limit": "1001"},
        {"limit": "many"},
        {"type": "JobExploded"},
    ],
)
async def test_bad_parameters_are_400(client: Client, params: dict[str, str]) -> None:
    resp = await client.get("/v1/events", params=params, headers=AUTH)
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["code"] == "invalid_parameter"
    assert error["details"][0]["path"] == f"query.{next(iter(params))}"


async def test_the_job_view_includes_its_events(client: Client) -> None:
    job, token = await job_token(client)
    await post(client, token, task_finish_xml("m-1"))
    await post(client, token, task_finish_json("m-2", state="Failed"))
    await post(client, STATIC_TOKEN, task_finish_xml("m-other"))
    resp = await client.get(f"/v1/jobs/{job}", headers=AUTH)
    assert resp.status == 200
    view = await resp.json()
    assert view["state"] == "running"
    assert [(e["job_id"], e["state"]) for e in view["events"]] == [
        ("m-1", "Success"),
        ("m-2", "Failed"),
    ]
    assert view["events"] == (await feed(client, job_id=job))["events"]


async def test_a_nul_in_a_parameter_finds_nothing_on_every_backend(client: Client) -> None:
    # PostgreSQL text cannot carry a NUL (SQLite's can): it once made these a 500 there.
    resp = await client.get("/v1/events", params={"job_id": "j\x00"}, headers=AUTH)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["events"] == []
    resp = await client.get("/v1/rejected", params={"reason": "\x00"}, headers=AUTH)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["rejected"] == []
    for method, path in (
        ("GET", "/v1/jobs/j%00"),
        ("POST", "/v1/jobs/j%00/cancel"),
        ("POST", "/v1/jobs/j%00/retry"),
    ):
        resp = await client.request(method, path, headers=AUTH)
        assert resp.status == 404, (path, await resp.text())
