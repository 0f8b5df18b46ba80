"""`/v1/rejected`: refused bodies listed with filters and a cursor, and replayed through today's
pipeline: an accepted replay stores the events and forgets the body, one still refused stays with
its new reason, a truncated one cannot be replayed."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from service.app import create_app
from service.appkeys import EVENT_STORE
from service.settings import Settings
from tests.events.support import API_TOKEN, STATIC_TOKEN, events_settings, task_finish_json

Client = TestClient[web.Request, web.Application]
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
RECEIVED = "2026-01-02T03:04:05.000Z"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # Retention off: the kept rows carry an old receipt time, which a pass would prune.
    return events_settings(
        tmp_path, CIRELAY_REJECTED_BODY_MAX_BYTES="4096", CIRELAY_RETENTION_DAYS="0"
    )


@pytest.fixture
async def client(settings: Settings, aiohttp_client: Callable[..., Awaitable[Client]]) -> Client:
    return await aiohttp_client(create_app(settings))


async def keep(client: Client, body: bytes, *, reason: str, source: str = "http") -> None:
    """A body refused by an earlier version of cirelay, as the store kept it."""
    await client.app[EVENT_STORE].reject(
        received_at=RECEIVED,
        source=source,
        reason=reason,
        message="refused back then",
        content_type="application/json",
        body=body,
    )


async def listed(client: Client, query: str = "") -> dict[str, Any]:
    resp = await client.get(f"/v1/rejected{query}", headers=AUTH)
    assert resp.status == 200
    answer: dict[str, Any] = await resp.json()
    return answer


async def test_refused_bodies_are_listed_with_filters_and_a_cursor(client: Client) -> None:
    await client.post(f"/v1/callbacks/{STATIC_TOKEN}", data=b"<x")
    await client.post(f"/v1/callbacks/{STATIC_TOKEN}", data=b"")
    await keep(client, b"{}", reason="unknown_event", source="pulsar")
    every = (await listed(client))["rejected"]
    assert [row["reason"] for row in every] == ["malformed_xml", "empty", "unknown_event"]
    assert every[0]["body"] == "<x"
    assert every[0]["truncated"] is False
    assert [r["reason"] for r in (await listed(client, "?source=pulsar"))["rejected"]] == [
        "unknown_event"
    ]
    assert [r["source"] for r in (await listed(client, "?reason=empty"))["rejected"]] == ["http"]
    first = await listed(client, "?limit=2")
    assert len(first["rejected"]) == 2
    rest = await listed(client, f"?limit=2&cursor={first['next_cursor']}")
    assert [r["reason"] for r in rest["rejected"]] == ["unknown_event"]
    assert rest["next_cursor"] is None


@pytest.mark.parametrize("query", ["?source=ftp", "?cursor=nope", "?limit=0"])
async def test_bad_list_parameters_are_400(client: Client, query: str) -> None:
    resp = await client.get(f"/v1/rejected{query}", headers=AUTH)
    assert resp.status == 400


async def test_a_replay_accepted_today_stores_the_events_and_forgets_the_body(
    client: Client,
) -> None:
    await keep(client, task_finish_json("jreplayed"), reason="an_old_bug")
    [row] = (await listed(client))["rejected"]
    resp = await client.post(f"/v1/rejected/{row['id']}/replay", headers=AUTH)
    assert resp.status == 200
    outcome = await resp.json()
    assert (outcome["outcome"], outcome["new"], outcome["duplicates"]) == ("accepted", 1, 0)
    assert (await listed(client))["rejected"] == []
    feed = await client.get("/v1/events?job_id=jreplayed", headers=AUTH)
    [event] = (await feed.json())["events"]
    assert (event["source"], event["received_at"]) == ("http", RECEIVED)  # as first delivered


async def test_a_replay_still_refused_stays_with_its_new_reason(client: Client) -> None:
    await keep(client, b"<Response><EventName>", reason="an_old_reason")
    [row] = (await listed(client))["rejected"]
    resp = await client.post(f"/v1/rejected/{row['id']}/replay", headers=AUTH)
    outcome = await resp.json()
    assert (resp.status, outcome["outcome"], outcome["reason"]) == (
        200,
        "refused",
        "malformed_json",
    )
    [after] = (await listed(client))["rejected"]
    assert (after["id"], after["reason"]) == (row["id"], "malformed_json")


async def test_a_truncated_body_is_not_replayed(client: Client) -> None:
    await keep(client, task_finish_json("jbig") + b" " * 8192, reason="body_too_large")
    [row] = (await listed(client))["rejected"]
    assert row["truncated"] is True
    resp = await client.post(f"/v1/rejected/{row['id']}/replay", headers=AUTH)
    assert (await resp.json())["outcome"] == "truncated"
    assert [r["id"] for r in (await listed(client))["rejected"]] == [row["id"]]


@pytest.mark.parametrize("rejected_id", ["999", "abc", "%C3%A9", "9" * 40])
async def test_replaying_an_unknown_id_is_404(client: Client, rejected_id: str) -> None:
    resp = await client.post(f"/v1/rejected/{rejected_id}/replay", headers=AUTH)
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "rejected_not_found"


async def test_replaying_all_matching_is_bounded_and_counted(client: Client) -> None:
    for n in range(3):
        await keep(client, task_finish_json(f"jall{n}"), reason="an_old_bug")
    await keep(client, b"<x", reason="an_old_bug")
    await keep(client, task_finish_json("jother"), reason="another_reason")
    resp = await client.post("/v1/rejected/replay?reason=an_old_bug&limit=3", headers=AUTH)
    summary = await resp.json()
    assert (summary["accepted"], summary["refused"], summary["truncated"]) == (3, 0, 0)
    resp = await client.post("/v1/rejected/replay?reason=an_old_bug", headers=AUTH)
    summary = await resp.json()
    assert (summary["accepted"], summary["refused"]) == (0, 1)
    remaining = [r["reason"] for r in (await listed(client))["rejected"]]
    assert sorted(remaining) == ["another_reason", "malformed_json"]


async def test_the_rejected_routes_need_the_bearer_token(client: Client) -> None:
    assert (await client.get("/v1/rejected")).status == 401
    assert (await client.post("/v1/rejected/1/replay")).status == 401
    assert (await client.post("/v1/rejected/replay")).status == 401
