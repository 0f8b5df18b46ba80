"""`/v1/jobs` intake, reads, listing and local cancel/retry on a real socket and SQLite file.

The submitter is off here (CIRELAY_SUBMITTER_ENABLED=false) so jobs stay where the test puts
them; submission against the emulator is covered in test_jobs_ci.py and tests/queue.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from service.app import create_app
from service.appkeys import EVENT_STORE, METRICS, QUEUE
from service.queue import JobError
from service.settings import Settings
from tests.queue.samples import BUCKET, REGION, request_json, request_tree, request_xml

RFC3339_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
JSON = {"Content-Type": "application/json"}
XML = {"Content-Type": "application/xml"}

Client = TestClient[web.Request, web.Application]
ClientFactory = Callable[..., Awaitable[Client]]


@pytest.fixture
def intake_settings(settings: Settings) -> Settings:
    return settings.replace(
        submitter_enabled=False, ci_bucket=BUCKET, ci_region=REGION, max_body_bytes=64 * 1024
    )


@pytest.fixture
async def api(intake_settings: Settings, aiohttp_client: ClientFactory) -> Client:
    return await aiohttp_client(create_app(intake_settings))


async def post_job(
    api: Client,
    auth: dict[str, str],
    body: bytes,
    headers: dict[str, str] | None = None,
    /,
    **params: str,
) -> tuple[int, dict[str, Any]]:
    resp = await api.post(
        "/v1/jobs", data=body, headers={**auth, **(headers or JSON)}, params=params
    )
    return resp.status, await resp.json()


def error(body: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = body["error"]
    return result


# --- accepted jobs ------------------------------------------------------------------------------


async def test_a_json_request_is_queued_and_readable(api: Client, auth: dict[str, str]) -> None:
    resp = await api.post("/v1/jobs", data=request_json(level=2), headers={**auth, **JSON})
    assert resp.status == 202
    job = await resp.json()
    assert resp.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert job["state"] == "queued"
    assert (job["bucket"], job["region"]) == (BUCKET, REGION)
    assert job["request"] == request_tree(level=2)
    assert job["tag"] == "Transcode"
    assert job["job_level"] == 2
    assert job["ci_job_id"] is None
    assert job["attempts"] == 0
    assert job["last_error"] is None
    assert RFC3339_Z.match(job["created_at"])
    assert job["submitted_at"] is None
    assert job["finished_at"] is None
    assert job["events"] == []
    assert re.fullmatch(r"demo-[0-9a-f]{16}", job["ci_name"])

    read = await api.get(f"/v1/jobs/{job['id']}", headers=auth)
    assert read.status == 200
    assert await read.json() == job


async def test_xml_and_bare_json_requests_are_accepted(api: Client, auth: dict[str, str]) -> None:
    status_xml, from_xml = await post_job(api, auth, request_xml(level=1), XML)
    bare = json.dumps(request_tree(level=1)).encode()
    status_bare, from_bare = await post_job(api, auth, bare)
    assert (status_xml, status_bare) == (202, 202)
    assert from_xml["request"] == from_bare["request"] == request_tree(level=1)


async def test_the_format_is_sniffed_without_a_content_type(
    api: Client, auth: dict[str, str]
) -> None:
    resp = await api.post("/v1/jobs", data=request_xml(), headers={**auth, "Content-Type": ""})
    assert resp.status == 202


async def test_the_target_can_be_chosen_per_job(api: Client, auth: dict[str, str]) -> None:
    status, job = await post_job(
        api, auth, request_json(), bucket="other-1250000001", region="ap-beijing"
    )
    assert status == 202
    assert (job["bucket"], job["region"]) == ("other-1250000001", "ap-beijing")


async def test_enqueued_jobs_are_counted_by_tag_and_via(api: Client, auth: dict[str, str]) -> None:
    await post_job(api, auth, request_json())
    metrics = api.app[METRICS]
    value = metrics.registry.get_sample_value(
        "cirelay_jobs_enqueued_total", {"tag": "Transcode", "via": "http"}
    )
    assert value == 1.0
    assert (
        metrics.registry.get_sample_value(
            "cirelay_jobs_enqueued_total", {"tag": "Snapshot", "via": "pulsar"}
        )
        == 0.0
    )  # pre-initialised


# --- idempotency --------------------------------------------------------------------------------


async def test_the_same_idempotency_key_and_body_return_the_same_job(
    api: Client, auth: dict[str, str]
) -> None:
    key = {"Idempotency-Key": "order-42"}
    status1, first = await post_job(api, auth, request_json(), {**JSON, **key})
    status2, second = await post_job(api, auth, request_json(), {**JSON, **key})
    # The same Request sent as XML is the same body.
    status3, third = await post_job(api, auth, request_xml(), {**XML, **key})
    assert (status1, status2, status3) == (202, 200, 200)
    assert first["id"] == second["id"] == third["id"]
    listed = await (await api.get("/v1/jobs", headers=auth)).json()
    assert [j["id"] for j in listed["jobs"]] == [first["id"]]


async def test_a_different_body_under_a_used_key_is_409(api: Client, auth: dict[str, str]) -> None:
    key = {"Idempotency-Key": "order-43"}
    _, first = await post_job(api, auth, request_json("one"), {**JSON, **key})
    status, body = await post_job(api, auth, request_json("two"), {**JSON, **key})
    assert status == 409
    assert error(body)["code"] == "idempotency_conflict"
    assert error(body)["details"] == [{"job_id": first["id"]}]
    # Another target is another body, too.
    status, _ = await post_job(api, auth, request_json("one"), {**JSON, **key}, region="ap-beijing")
    assert status == 409


@pytest.mark.parametrize("key", ["", "has space", "x" * 201, "naïve"])
async def test_a_malformed_idempotency_key_is_400(
    api: Client, auth: dict[str, str], key: str
) -> None:
    status, body = await post_job(api, auth, request_json(), {**JSON, "Idempotency-Key": key})
    assert status == 400
    assert error(body)["code"] == "invalid_idempotency_key"


# --- refused jobs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "headers", "reason"),
    [
        (b"", JSON, "empty"),
        (b'{"Request": {"Name": "demo",', JSON, "malformed_json"),
        (b"<Request><Name>demo</Name>", XML, "malformed_xml"),
        (b"\xff\xfe{}", JSON, "malformed_json"),
        (
            b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaa">]><Request>&a;</Request>',
            XML,
            "doctype",
        ),
        (b"[" * 100 + b"]" * 100, JSON, "too_deep"),
        (b"<a>" * 100 + b"</a>" * 100, XML, "too_deep"),
    ],
    ids=["empty", "json", "xml", "utf8", "doctype", "deep-json", "deep-xml"],
)
async def test_a_malformed_document_is_400_with_its_reason(
    api: Client, auth: dict[str, str], body: bytes, headers: dict[str, str], reason: str
) -> None:
    status, answer = await post_job(api, auth, body, headers)
    assert status == 400
    assert error(answer)["code"] == "invalid_document"
    assert error(answer)["details"] == [{"reason": reason}]
    assert await api.app[QUEUE].list_jobs() == []


async def test_an_invalid_request_is_422_with_every_error_and_its_path(
    api: Client, auth: dict[str, str]
) -> None:
    tree = request_tree("bad name!", level=7)
    del tree["Operation"]["QueueId"]
    tree["Operation"]["CallBackType"] = "TDMQ"  # without CallBackMqConfig
    status, body = await post_job(api, auth, json.dumps(tree).encode())
    assert status == 422
    assert error(body)["code"] == "invalid_request"
    paths = {d["path"] for d in error(body)["details"]}
    assert {
        "Request.Name",
        "Request.Operation.JobLevel",
        "Request.Operation.QueueId",
        "Request.Operation.CallBackMqConfig",
    } <= paths
    assert all(d["message"] for d in error(body)["details"])
    assert await api.app[QUEUE].list_jobs() == []


async def test_unknown_fields_are_422(api: Client, auth: dict[str, str]) -> None:
    tree = request_tree()
    tree["Priority"] = "high"
    tree["Operation"]["Colour"] = "blue"
    status, body = await post_job(api, auth, json.dumps(tree).encode())
    assert status == 422
    details = {d["path"]: d["message"] for d in error(body)["details"]}
    assert "Request.Priority" in details
    assert "Request.Operation.Colour" in details


async def test_a_flood_of_errors_is_reported_up_to_a_bound(
    api: Client, auth: dict[str, str]
) -> None:
    tree = request_tree()
    tree["Operation"].update({f"Unknown{n:03}": "x" for n in range(150)})
    status, body = await post_job(api, auth, json.dumps(tree).encode())
    assert status == 422
    assert error(body)["message"] == "the Request breaks 150 rule(s); the first 100 are listed"
    paths = [d["path"] for d in error(body)["details"]]
    assert paths == [f"Request.Operation.Unknown{n:03}" for n in range(100)]


async def test_wrong_types_are_422(api: Client, auth: dict[str, str]) -> None:
    tree = request_tree()
    tree["Name"] = 42
    tree["Input"] = ["in/a.mp4"]
    status, body = await post_job(api, auth, json.dumps(tree).encode())
    assert status == 422
    paths = {d["path"] for d in error(body)["details"]}
    assert {"Request.Name", "Request.Input"} <= paths


async def test_an_xml_request_with_the_wrong_root_is_422(api: Client, auth: dict[str, str]) -> None:
    status, body = await post_job(api, auth, b"<Job><Name>x</Name></Job>", XML)
    assert status == 422
    assert error(body)["details"][0]["path"] == "Request"


async def test_a_body_over_the_limit_is_413(api: Client, auth: dict[str, str]) -> None:
    tree = request_tree()
    tree["Operation"]["UserData"] = "x" * (70 * 1024)
    status, body = await post_job(api, auth, json.dumps(tree).encode())
    assert status == 413
    assert error(body)["code"] == "body_too_large"


async def test_an_unsupported_content_type_is_415(api: Client, auth: dict[str, str]) -> None:
    status, body = await post_job(api, auth, request_json(), {"Content-Type": "text/plain"})
    assert status == 415
    assert error(body)["code"] == "unsupported_media_type"


async def test_a_missing_default_target_names_the_setting(
    settings: Settings, aiohttp_client: ClientFactory, auth: dict[str, str]
) -> None:
    api = await aiohttp_client(create_app(settings.replace(submitter_enabled=False)))
    status, body = await post_job(api, auth, request_json())
    assert status == 400
    assert error(body)["code"] == "missing_target"
    assert "CIRELAY_CI_BUCKET" in error(body)["message"]
    status, body = await post_job(api, auth, request_json(), bucket=BUCKET)
    assert status == 400
    assert "CIRELAY_CI_REGION" in error(body)["message"]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"bucket": "Evil.example.com/x"}, "bucket"),
        ({"bucket": "-bad-"}, "bucket"),
        ({"region": "ap_chongqing"}, "region"),
        ({"region": "x.y"}, "region"),
    ],
)
async def test_a_malformed_target_is_400(
    api: Client, auth: dict[str, str], params: dict[str, str], field: str
) -> None:
    status, body = await post_job(api, auth, request_json(), **params)
    assert status == 400
    assert error(body)["code"] == "invalid_target"
    assert error(body)["details"][0]["path"] == field


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "test-api-token"}],
    ids=["none", "wrong", "no-scheme"],
)
async def test_every_jobs_route_needs_the_bearer_token(
    api: Client, headers: dict[str, str]
) -> None:
    for method, path in [
        ("POST", "/v1/jobs"),
        ("GET", "/v1/jobs"),
        ("GET", "/v1/jobs/x"),
        ("POST", "/v1/jobs/x/cancel"),
        ("POST", "/v1/jobs/x/retry"),
    ]:
        resp = await api.request(method, path, data=request_json(), headers=headers)
        assert resp.status == 401, (method, path)
        assert (await resp.json())["error"]["code"] == "unauthorized"
    assert await api.app[QUEUE].list_jobs() == []


async def test_unknown_routes_and_methods_are_json_404_and_405(
    api: Client, auth: dict[str, str]
) -> None:
    resp = await api.get("/v1/jobz", headers=auth)
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "not_found"
    resp = await api.get("/v1/jobs/nope", headers=auth)
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "job_not_found"
    wrong = [("PUT", "/v1/jobs"), ("DELETE", "/v1/jobs/x"), ("GET", "/v1/jobs/x/cancel")]
    for method, path in wrong:
        resp = await api.request(method, path, headers=auth)
        assert resp.status == 405, (method, path)
        assert (await resp.json())["error"]["code"] == "method_not_allowed"


# --- listing ------------------------------------------------------------------------------------


async def test_the_list_pages_newest_first_with_a_stable_cursor(
    api: Client, auth: dict[str, str]
) -> None:
    ids = [(await post_job(api, auth, request_json(f"job{i}")))[1]["id"] for i in range(7)]
    seen: list[str] = []
    params = {"limit": "3"}
    pages = 0
    while True:
        page = await (await api.get("/v1/jobs", headers=auth, params=params)).json()
        pages += 1
        seen += [j["id"] for j in page["jobs"]]
        assert all("events" not in j for j in page["jobs"])
        # A job arriving while a client pages does not shift the pages it has yet to read.
        await post_job(api, auth, request_json("late"))
        if page["next_cursor"] is None:
            break
        params = {"limit": "3", "cursor": page["next_cursor"]}
    assert seen == ids[::-1]
    assert pages == 3


async def test_the_list_filters_by_state(api: Client, auth: dict[str, str]) -> None:
    _, a = await post_job(api, auth, request_json("a"))
    _, b = await post_job(api, auth, request_json("b"))
    await api.post(f"/v1/jobs/{a['id']}/cancel", headers=auth)
    page = await (await api.get("/v1/jobs?state=cancelled", headers=auth)).json()
    assert [j["id"] for j in page["jobs"]] == [a["id"]]
    page = await (await api.get("/v1/jobs?state=queued,cancelled", headers=auth)).json()
    assert [j["id"] for j in page["jobs"]] == [b["id"], a["id"]]
    assert page["next_cursor"] is None


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("state=finished", "invalid_parameter"),
        ("limit=0", "invalid_parameter"),
        ("limit=201", "invalid_parameter"),
        ("limit=ten", "invalid_parameter"),
        ("cursor=bm9wZQ", "invalid_cursor"),
        ("cursor=%%%", "invalid_cursor"),
        ("cursor=", "invalid_cursor"),
        # Well-formed cursors carrying numbers this API never issues: too large for SQLite, signed.
        ("cursor=djE6OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk", "invalid_cursor"),
        ("cursor=djE6LTU", "invalid_cursor"),
    ],
)
async def test_bad_list_parameters_are_400(
    api: Client, auth: dict[str, str], query: str, code: str
) -> None:
    resp = await api.get(f"/v1/jobs?{query}", headers=auth)
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == code


# --- cancel and retry without CI ------------------------------------------------------------------


async def test_a_queued_job_is_cancelled_locally(api: Client, auth: dict[str, str]) -> None:
    _, job = await post_job(api, auth, request_json())
    resp = await api.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
    assert resp.status == 200
    cancelled = await resp.json()
    assert cancelled["state"] == "cancelled"
    assert RFC3339_Z.match(cancelled["finished_at"])
    again = await api.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
    assert again.status == 409
    assert (await again.json())["error"]["code"] == "job_not_cancellable"
    assert (await api.post("/v1/jobs/nope/cancel", headers=auth)).status == 404


async def test_only_a_dead_job_can_be_retried(api: Client, auth: dict[str, str]) -> None:
    _, job = await post_job(api, auth, request_json())
    resp = await api.post(f"/v1/jobs/{job['id']}/retry", headers=auth)
    assert resp.status == 409
    assert (await resp.json())["error"]["code"] == "job_not_retryable"
    assert (await api.post("/v1/jobs/nope/retry", headers=auth)).status == 404

    queue = api.app[QUEUE]
    claimed = await queue.claim("w", lease_seconds=30, now=1e10)
    assert claimed is not None
    await queue.bury(job["id"], "w", error=JobError("InvalidArgument", "no such queue"), now=1e10)
    dead = await (await api.get(f"/v1/jobs/{job['id']}", headers=auth)).json()
    assert dead["state"] == "dead"
    assert dead["last_error"] == {"code": "InvalidArgument", "message": "no such queue"}

    resp = await api.post(f"/v1/jobs/{job['id']}/retry", headers=auth)
    assert resp.status == 200
    retried = await resp.json()
    assert retried["state"] == "queued"
    assert retried["attempts"] == 0
    assert retried["finished_at"] is None


async def test_submission_outcomes_are_pre_initialised(api: Client) -> None:
    sample = api.app[METRICS].registry.get_sample_value
    for outcome in ("created", "adopted", "retry", "dead", "cancelled"):
        assert sample("cirelay_jobs_submitted_total", {"outcome": outcome}) == 0.0


async def test_a_request_whose_xml_form_is_over_cis_limit_is_422_naming_it(
    intake_settings: Settings, auth: dict[str, str], aiohttp_client: ClientFactory
) -> None:
    api = await aiohttp_client(create_app(intake_settings.replace(max_body_bytes=1_048_576)))
    # 400 KB of JSON; each "<" is "&lt;" in XML: 1.6 MB as CI would receive it.
    status, body = await post_job(api, auth, request_json(UserData="<" * 400_000))
    assert status == 422
    assert error(body)["code"] == "request_too_large"
    assert "1048576" in error(body)["message"]
    listed = await api.get("/v1/jobs", headers=auth)
    assert (await listed.json())["jobs"] == []
    # Under the limit in its XML form too: accepted.
    status, body = await post_job(api, auth, request_json(UserData="a" * 400_000))
    assert status == 202


async def test_a_job_embeds_its_first_100_events_and_links_its_feed_for_the_rest(
    api: Client, auth: dict[str, str]
) -> None:
    _, job = await post_job(api, auth, request_json())
    events = [
        {
            "event_id": f"e{n:03d}",
            "event_type": "TaskFinish",
            "source": "http",
            "format": "xml",
            "job_id": f"j{n:03d}",
            "batch_id": None,
            "cirelay_job_id": job["id"],
            "received_at": "2024-01-01T00:00:00Z",
            "state": "Success",
        }
        for n in range(150)
    ]
    await api.app[EVENT_STORE].store(events)
    read = await (await api.get(f"/v1/jobs/{job['id']}", headers=auth)).json()
    assert [e["event_id"] for e in read["events"]] == [f"e{n:03d}" for n in range(100)]
    assert read["events_count"] == 150
    feed = await (await api.get(read["events_feed"], headers=auth)).json()
    assert len(feed["events"]) == 100
    rest = await api.get(read["events_feed"] + f"&after={feed['next_cursor']}", headers=auth)
    assert [e["event_id"] for e in (await rest.json())["events"]] == [
        f"e{n:03d}" for n in range(100, 150)
    ]
