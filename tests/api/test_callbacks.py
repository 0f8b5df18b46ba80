"""`POST /v1/callbacks/{token}` on a real socket, on a SQLite file and on PostgreSQL.

Every documented callback shape is stored as its canonical event and linked to its job; every kind
of hostile body is refused with a 4xx JSON error whose code is the reason, and kept for replay.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from service.app import create_app
from service.appkeys import EVENT_PIPELINE, EVENT_STORE, METRICS, QUEUE, SETTINGS
from service.ingest.parse import parse_callback
from service.settings import Settings
from service.storage import open_storage
from service.tokens import callback_token
from tests.events.support import (
    FIXTURES,
    STATIC_TOKEN,
    events_settings,
    sample,
    submitted_job,
    task_finish_json,
    task_finish_xml,
)

Client = TestClient[web.Request, web.Application]

CALLBACK_FILES = sorted(
    p.name
    for p in FIXTURES.iterdir()
    if p.suffix in (".xml", ".json") and ".expected" not in p.name
)


# Parsing, not storage, tells these cases apart: one backend is enough (storing rejected bodies
# and events is the storage contract suite's, on every backend).
SQLITE_ONLY = pytest.mark.parametrize("backend", ["sqlite"])


@pytest.fixture
def settings(tmp_path: Path, storage_url: str) -> Settings:
    return events_settings(tmp_path, CIRELAY_DATABASE_URL=storage_url)


@pytest.fixture
async def cb_client(settings: Settings, aiohttp_client: Callable[..., Awaitable[Client]]) -> Client:
    return await aiohttp_client(create_app(settings))


async def token_for_new_job(client: Client, ci_job_id: str | None = None) -> tuple[str, str, str]:
    """(token, our job id, CI batch id) of a freshly submitted job."""
    job = await submitted_job(client.app[QUEUE], ci_job_id)
    assert job.ci_job_id is not None
    return callback_token(client.app[SETTINGS].callback_key, job.id), job.id, job.ci_job_id


def content_type_of(name: str) -> str:
    return "application/json" if name.endswith(".json") else "application/xml"


def expected_event(name: str) -> dict[str, Any]:
    """The fixture's canonical event as documented, without what depends on the delivery."""
    stem = name.rsplit(".", 1)[0]
    expected: dict[str, Any] = json.loads((FIXTURES / f"{stem}.expected.json").read_text())
    return expected


# Fields that depend on the delivery rather than on the callback's content.
DELIVERY_FIELDS = ("received_at", "format", "document", "cirelay_job_id", "batch_id")


@pytest.mark.parametrize("name", CALLBACK_FILES)
async def test_documented_shapes_are_stored_as_their_canonical_event(
    cb_client: Client, name: str
) -> None:
    token, job_id, batch_id = await token_for_new_job(cb_client)
    body = (FIXTURES / name).read_bytes()
    ctype = content_type_of(name)
    resp = await cb_client.post(
        f"/v1/callbacks/{token}", data=body, headers={"Content-Type": ctype}
    )
    assert resp.status == 200, await resp.text()
    [stored] = await cb_client.app[EVENT_STORE].for_job(job_id)
    assert await resp.json() == {"event_ids": [stored["event_id"]], "new": 1, "duplicates": 0}
    expected = expected_event(name)
    assert {k: v for k, v in stored.items() if k not in DELIVERY_FIELDS} == {
        k: v for k, v in expected.items() if k not in DELIVERY_FIELDS
    }
    assert (stored["cirelay_job_id"], stored["batch_id"]) == (job_id, batch_id)
    assert stored["format"] == name.rsplit(".", 1)[1]
    assert stored["document"] == parse_callback(body, ctype).body
    assert set(stored) == set(expected) | {"format", "document"}


@SQLITE_ONLY
@pytest.mark.parametrize("stem", sorted(p.stem for p in FIXTURES.glob("*.xml")))
async def test_xml_and_json_of_one_callback_are_one_event(cb_client: Client, stem: str) -> None:
    token, job_id, _ = await token_for_new_job(cb_client)
    first = await cb_client.post(
        f"/v1/callbacks/{token}",
        data=(FIXTURES / f"{stem}.xml").read_bytes(),
        headers={"Content-Type": "application/xml"},
    )
    second = await cb_client.post(
        f"/v1/callbacks/{token}",
        data=(FIXTURES / f"{stem}.json").read_bytes(),
        headers={"Content-Type": "application/json"},
    )
    a, b = await first.json(), await second.json()
    assert (first.status, second.status) == (200, 200)
    assert a["event_ids"] == b["event_ids"]
    assert (b["new"], b["duplicates"]) == (0, len(a["event_ids"]))
    assert [e["format"] for e in await cb_client.app[EVENT_STORE].for_job(job_id)] == ["xml"] * len(
        a["event_ids"]
    )


async def test_format_is_sniffed_without_content_type(cb_client: Client) -> None:
    token, job_id, _ = await token_for_new_job(cb_client)
    for body in (task_finish_xml("j-sniff-x"), task_finish_json("j-sniff-j")):
        resp = await cb_client.post(
            f"/v1/callbacks/{token}", data=body, headers={"Content-Type": "text/plain"}
        )
        assert resp.status == 200
    formats = {e["job_id"]: e["format"] for e in await cb_client.app[EVENT_STORE].for_job(job_id)}
    assert formats == {"j-sniff-x": "xml", "j-sniff-j": "json"}


async def test_duplicate_delivery_is_answered_200_and_counted(cb_client: Client) -> None:
    token, job_id, _ = await token_for_new_job(cb_client)
    body = task_finish_xml("j-dup")
    answers = []
    for _ in range(3):
        resp = await cb_client.post(f"/v1/callbacks/{token}", data=body)
        assert resp.status == 200
        answers.append(await resp.json())
    assert [(a["new"], a["duplicates"]) for a in answers] == [(1, 0), (0, 1), (0, 1)]
    assert len(await cb_client.app[EVENT_STORE].for_job(job_id)) == 1
    registry = cb_client.app[METRICS].registry
    assert sample(registry, "cirelay_events_duplicate_total", source="http") == 2
    assert (
        sample(
            registry,
            "cirelay_events_received_total",
            source="http",
            format="xml",
            event_type="TaskFinish",
        )
        == 1
    )


async def test_first_event_moves_the_job_to_running(cb_client: Client) -> None:
    token, job_id, _ = await token_for_new_job(cb_client)
    queue = cb_client.app[QUEUE]
    job = await queue.get(job_id)
    assert job is not None
    assert job.state == "submitted"
    resp = await cb_client.post(f"/v1/callbacks/{token}", data=task_finish_xml("j-run"))
    assert resp.status == 200
    job = await queue.get(job_id)
    assert job is not None
    assert job.state == "running"


async def test_callback_before_the_job_is_known_at_ci_is_kept_unlinked_to_a_batch(
    cb_client: Client,
) -> None:
    # The submitter may record CI's JobId after CI already called back.
    token = callback_token(cb_client.app[SETTINGS].callback_key, "not-yet-recorded")
    resp = await cb_client.post(f"/v1/callbacks/{token}", data=task_finish_xml("j-early"))
    assert resp.status == 200
    [event] = await cb_client.app[EVENT_STORE].for_job("not-yet-recorded")
    assert (event["cirelay_job_id"], event["batch_id"]) == ("not-yet-recorded", None)


async def test_static_token_events_are_stored_without_a_job(cb_client: Client) -> None:
    resp = await cb_client.post(
        f"/v1/callbacks/{STATIC_TOKEN}",
        data=task_finish_json("j-static"),
        headers={"Content-Type": "application/json"},
    )
    assert resp.status == 200
    [(_, event)] = await cb_client.app[EVENT_STORE].feed(job_id="j-static")
    assert (event["cirelay_job_id"], event["batch_id"], event["source"]) == (None, None, "http")


async def test_a_job_id_too_long_to_index_is_refused_and_kept_on_every_backend(
    cb_client: Client,
) -> None:
    # Random hex does not compress: PostgreSQL refused its index entry, and the answer was a 500.
    body = task_finish_json(secrets.token_hex(4000))
    resp = await cb_client.post(
        f"/v1/callbacks/{STATIC_TOKEN}", data=body, headers={"Content-Type": "application/json"}
    )
    assert resp.status == 400, await resp.text()
    assert (await resp.json())["error"]["code"] == "bad_field"
    [kept] = await cb_client.app[EVENT_STORE].rejected()
    assert kept.reason == "bad_field"


@SQLITE_ONLY
@pytest.mark.parametrize(
    "token",
    [
        "nope",
        STATIC_TOKEN + "x",
        "somejob.AAAAAAAAAAAAAAAAAAAAAAAAAAA",  # well-formed but not our HMAC
    ],
)
async def test_unknown_token_is_404_and_nothing_is_kept(cb_client: Client, token: str) -> None:
    resp = await cb_client.post(f"/v1/callbacks/{token}", data=task_finish_xml("j-x"))
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "not_found"
    store = cb_client.app[EVENT_STORE]
    assert await store.feed() == []
    assert await store.rejected() == []


async def test_no_static_token_configured_means_none_is_accepted(
    tmp_path: Path, aiohttp_client: Callable[..., Awaitable[Client]]
) -> None:
    client = await aiohttp_client(create_app(events_settings(tmp_path, CIRELAY_CALLBACK_TOKEN="")))
    resp = await client.post("/v1/callbacks/x", data=task_finish_xml("j-x"))
    assert resp.status == 404


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<Response><EventName>TaskFinish</EventName><JobsDetail><JobId>&lol4;</JobId></JobsDetail></Response>"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE r [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<Response><EventName>TaskFinish</EventName><JobsDetail><JobId>&xxe;</JobId></JobsDetail></Response>"""

HOSTILE: list[tuple[str, bytes, str, str]] = [
    ("empty", b"", "application/xml", "empty"),
    ("blank", b"  \n\t ", "application/json", "empty"),
    ("truncated_xml", task_finish_xml("j-t")[:120], "application/xml", "malformed_xml"),
    ("truncated_json", task_finish_json("j-t")[:120], "application/json", "malformed_json"),
    ("not_a_document", b"hello, world", "text/plain", "malformed_xml"),
    ("binary", bytes(range(256)), "application/octet-stream", "malformed_xml"),
    ("json_not_utf8", b'{"Response": "\xff\xfe"}', "application/json", "malformed_json"),
    ("billion_laughs", BILLION_LAUGHS, "application/xml", "doctype"),
    ("external_entity", EXTERNAL_ENTITY, "application/xml", "doctype"),
    (
        "too_deep_xml",
        b"<Response>" + b"<a>" * 100 + b"</a>" * 100 + b"</Response>",
        "application/xml",
        "too_deep",
    ),
    (
        "too_deep_json",
        b'{"Response": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        "application/json",
        "too_deep",
    ),
    (
        "unknown_event_name",
        b"<Response><EventName>JobExploded</EventName><JobsDetail><JobId>j</JobId>"
        b"<State>Success</State></JobsDetail></Response>",
        "application/xml",
        "unknown_event",
    ),
    (
        "task_finish_without_jobs_detail",
        b'{"Response": {"EventName": "TaskFinish"}}',
        "application/json",
        "missing_jobs_detail",
    ),
    (
        "task_finish_with_too_many_jobs_detail",
        b"<Response><EventName>TaskFinish</EventName>"
        + b"".join(
            b"<JobsDetail><JobId>j%d</JobId><State>Success</State></JobsDetail>" % n
            for n in range(101)
        )
        + b"</Response>",
        "application/xml",
        "too_many_events",
    ),
    (
        "task_finish_empty_jobs_detail",
        b"<Response><EventName>TaskFinish</EventName><JobsDetail/></Response>",
        "application/xml",
        "missing_jobs_detail",
    ),
]


@SQLITE_ONLY
@pytest.mark.parametrize(
    ("body", "ctype", "reason"),
    [pytest.param(b, c, r, id=i) for i, b, c, r in HOSTILE],
)
async def test_hostile_bodies_are_refused_kept_and_counted(
    cb_client: Client, body: bytes, ctype: str, reason: str
) -> None:
    token, job_id, _ = await token_for_new_job(cb_client)
    resp = await cb_client.post(
        f"/v1/callbacks/{token}", data=body, headers={"Content-Type": ctype}
    )
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["code"] == reason
    assert error["message"]
    store = cb_client.app[EVENT_STORE]
    assert await store.for_job(job_id) == []
    [kept] = await store.rejected()
    assert (kept.reason, kept.source, kept.content_type) == (reason, "http", ctype)
    assert kept.body == body[: cb_client.app[SETTINGS].rejected_body_max_bytes]
    assert kept.body_bytes == len(body)
    registry = cb_client.app[METRICS].registry
    assert sample(registry, "cirelay_events_rejected_total", source="http", reason=reason) == 1
    job = await cb_client.app[QUEUE].get(job_id)
    assert job is not None
    assert job.state == "submitted"  # a refused body changes nothing
    assert (await cb_client.get("/healthz")).status == 200


async def test_a_nul_in_a_json_callback_is_refused_on_every_backend(cb_client: Client) -> None:
    # PostgreSQL's text columns cannot hold one: refused as a document, never a 5xx from storage.
    body = task_finish_json("j\u0000x")
    assert b"\\u0000" in body
    resp = await cb_client.post(
        f"/v1/callbacks/{STATIC_TOKEN}", data=body, headers={"Content-Type": "application/json"}
    )
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "malformed_json"
    [kept] = await cb_client.app[EVENT_STORE].rejected()
    assert kept.reason == "malformed_json"
    assert await cb_client.app[EVENT_STORE].feed() == []


async def test_refused_bodies_are_kept_only_up_to_the_limit(
    tmp_path: Path, aiohttp_client: Callable[..., Awaitable[Client]]
) -> None:
    settings = events_settings(tmp_path, CIRELAY_REJECTED_BODY_MAX_BYTES="10")
    client = await aiohttp_client(create_app(settings))
    resp = await client.post(f"/v1/callbacks/{STATIC_TOKEN}", data=b"<Response><oops")
    assert resp.status == 400
    [kept] = await client.app[EVENT_STORE].rejected()
    assert (kept.body, kept.body_bytes) == (b"<Response>", 15)


@pytest.mark.parametrize("chunked", [False, True], ids=["content_length", "chunked"])
async def test_oversized_body_is_413_and_its_head_kept(
    tmp_path: Path, aiohttp_client: Callable[..., Awaitable[Client]], chunked: bool
) -> None:
    settings = events_settings(
        tmp_path, CIRELAY_MAX_BODY_BYTES="4096", CIRELAY_REJECTED_BODY_MAX_BYTES="100"
    )
    client = await aiohttp_client(create_app(settings))
    body = b"<Response>" + b"x" * 100_000 + b"</Response>"

    async def stream() -> Any:
        for start in range(0, len(body), 1000):
            yield body[start : start + 1000]

    resp = await client.post(
        f"/v1/callbacks/{STATIC_TOKEN}",
        data=stream() if chunked else body,
        headers={"Content-Type": "application/xml"},
    )
    assert resp.status == 413
    assert (await resp.json())["error"]["code"] == "body_too_large"
    [kept] = await client.app[EVENT_STORE].rejected()
    assert kept.reason == "body_too_large"
    assert kept.body == body[:100]
    # The size that came, not the size kept: declared, or as far as reading went when chunked.
    if chunked:
        assert 4096 < kept.body_bytes <= len(body)
    else:
        assert kept.body_bytes == len(body)
    registry = client.app[METRICS].registry
    assert (
        sample(registry, "cirelay_events_rejected_total", source="http", reason="body_too_large")
        == 1
    )
    # The service keeps serving after the refusal.
    ok = await client.post(f"/v1/callbacks/{STATIC_TOKEN}", data=task_finish_xml("j-after"))
    assert ok.status == 200


async def test_concurrent_callbacks_each_answered_after_commit(
    cb_client: Client, settings: Settings
) -> None:
    token, job_id, _ = await token_for_new_job(cb_client)
    # Another replica's connection sees committed rows only.
    observer = await open_storage(settings.database_url)

    async def post(i: int) -> None:
        media_job_id = f"j-conc-{i}"
        body = task_finish_xml(media_job_id) if i % 2 else task_finish_json(media_job_id)
        resp = await cb_client.post(f"/v1/callbacks/{token}", data=body)
        assert resp.status == 200
        assert (await resp.json())["new"] == 1
        assert await observer.events.job_ids_with("TaskFinish", [media_job_id]) == {media_job_id}

    try:
        await asyncio.gather(*(post(i) for i in range(100)))
    finally:
        await observer.close()
    events = await cb_client.app[EVENT_STORE].for_job(job_id)
    assert sorted(e["job_id"] for e in events) == sorted(f"j-conc-{i}" for i in range(100))


async def test_store_unavailable_is_503_not_a_crash(cb_client: Client) -> None:
    token, _, _ = await token_for_new_job(cb_client)
    await cb_client.app[EVENT_STORE].close()  # as during shutdown
    resp = await cb_client.post(f"/v1/callbacks/{token}", data=task_finish_xml("j-late"))
    assert resp.status == 503
    assert (await resp.json())["error"]["code"] == "unavailable"


async def test_received_at_is_when_it_arrived(cb_client: Client) -> None:
    before = datetime.now(UTC)
    resp = await cb_client.post(f"/v1/callbacks/{STATIC_TOKEN}", data=task_finish_xml("j-time"))
    after = datetime.now(UTC)
    assert resp.status == 200
    [(_, event)] = await cb_client.app[EVENT_STORE].feed(job_id="j-time")
    received = datetime.fromisoformat(event["received_at"])
    assert before.replace(microsecond=before.microsecond // 1000 * 1000) <= received <= after


async def test_tokens_of_an_old_secret_verify_while_it_is_listed(
    tmp_path: Path, aiohttp_client: Callable[..., Awaitable[Client]]
) -> None:
    old = events_settings(tmp_path, CIRELAY_CALLBACK_SECRET="old-secret")
    rotating = old.replace(callback_secret="new-secret,old-secret")
    retired = old.replace(callback_secret="new-secret")
    old_token = callback_token(old.callback_key, "job-signed-before-rotation")
    body = task_finish_json("jrotation")
    client = await aiohttp_client(create_app(rotating))
    resp = await client.post(f"/v1/callbacks/{old_token}", data=body)
    assert resp.status == 200
    client = await aiohttp_client(create_app(retired))
    resp = await client.post(f"/v1/callbacks/{old_token}", data=body)
    assert resp.status == 404


async def test_a_media_job_of_another_batch_is_refused_under_a_jobs_token(
    cb_client: Client,
) -> None:
    token_a, job_a, batch_a = await token_for_new_job(cb_client)
    token_v, job_v, batch_v = await token_for_new_job(cb_client)
    # What the reconciler learns from CI's listing of the victim's batch.
    cb_client.app[EVENT_PIPELINE].learn_batch(batch_v, ["jvictim"])
    body = task_finish_json("jvictim")
    resp = await cb_client.post(f"/v1/callbacks/{token_a}", data=body)
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["code"] == "wrong_batch"
    assert batch_v in error["message"]
    rejected = sample(
        cb_client.app[METRICS].registry,
        "cirelay_events_rejected_total",
        source="http",
        reason="wrong_batch",
    )
    assert rejected == 1
    assert await cb_client.app[EVENT_STORE].for_job(job_a) == []
    # The real callback, under the victim's own token, is stored as new and as the victim's.
    resp = await cb_client.post(f"/v1/callbacks/{token_v}", data=body)
    assert resp.status == 200
    assert (await resp.json())["new"] == 1
    [event] = await cb_client.app[EVENT_STORE].for_job(job_v)
    assert (event["job_id"], event["batch_id"]) == ("jvictim", batch_v)
    # A media job of the token's own batch is taken as before.
    cb_client.app[EVENT_PIPELINE].learn_batch(batch_a, ["jown"])
    resp = await cb_client.post(f"/v1/callbacks/{token_a}", data=task_finish_json("jown"))
    assert resp.status == 200


def many_details(count: int) -> bytes:
    [detail] = json.loads(task_finish_json("j"))["Response"]["JobsDetail"]
    details = [{**detail, "JobId": f"jmany{n:05d}"} for n in range(count)]
    return json.dumps({"Response": {"EventName": "TaskFinish", "JobsDetail": details}}).encode()


async def test_a_callback_with_more_entries_than_the_bound_is_refused_naming_it(
    tmp_path: Path, aiohttp_client: Callable[..., Awaitable[Client]]
) -> None:
    settings = events_settings(tmp_path, CIRELAY_MAX_EVENTS_PER_CALLBACK="3")
    client = await aiohttp_client(create_app(settings))
    resp = await client.post(f"/v1/callbacks/{STATIC_TOKEN}", data=many_details(4))
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["code"] == "too_many_events"
    assert "CIRELAY_MAX_EVENTS_PER_CALLBACK" in error["message"]
    resp = await client.post(f"/v1/callbacks/{STATIC_TOKEN}", data=many_details(3))
    assert resp.status == 200
    assert (await resp.json())["new"] == 3


async def test_a_big_callback_is_parsed_off_the_loop_and_stored_whole(
    tmp_path: Path, aiohttp_client: Callable[..., Awaitable[Client]]
) -> None:
    settings = events_settings(tmp_path, CIRELAY_MAX_EVENTS_PER_CALLBACK="400")
    client = await aiohttp_client(create_app(settings))
    body = many_details(400)
    assert len(body) > 64 * 1024  # past the size parsed in a worker thread
    resp = await client.post(f"/v1/callbacks/{STATIC_TOKEN}", data=body)
    assert resp.status == 200
    assert (await resp.json())["new"] == 400
