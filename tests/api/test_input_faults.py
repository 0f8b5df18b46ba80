"""Any input is a precise 4xx, never a 5xx: path parameters, query parameters, headers and bodies
that once reached code that raised. Raw bytes go over a plain socket, so nothing client-side
cleans them up first; hypothesis feeds arbitrary ones to the callback route and to /v1/jobs."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.appkeys import SETTINGS
from tests.events.support import API_TOKEN, STATIC_TOKEN, events_settings, task_finish_json
from tests.live import http_request, raw_exchange, serving

Live = tuple[web.Application, int]

AUTH = {b"Authorization": b"Bearer " + API_TOKEN.encode()}
JSON = {b"Content-Type": b"application/json"}
# Past Python's int-conversion limit (4300 digits).
HUGE_INT = b"9" * 5000
# One server for the module: hypothesis sends hundreds of requests.
PROPERTY_SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("input-faults")
    environ = {"CIRELAY_CI_BUCKET": "media-1250000000", "CIRELAY_CI_REGION": "ap-guangzhou"}
    with serving(events_settings(tmp, **environ)) as app_port:
        yield app_port


def rejected_rows(live: Live) -> int:
    with sqlite3.connect(Path(live[0][SETTINGS].sqlite_path)) as conn:
        (count,) = conn.execute("SELECT COUNT(*) FROM rejected_callbacks").fetchone()
    return int(count)


def code_of(body: bytes) -> str:
    code: str = json.loads(body)["error"]["code"]
    return code


def send(
    live: Live,
    method: str,
    path: bytes,
    headers: dict[bytes, bytes] | None = None,
    body: bytes = b"",
) -> tuple[int, bytes]:
    answer = raw_exchange(live[1], http_request(method, path, headers, body))
    return answer.status, answer.body


@pytest.mark.parametrize("token", ["a.%C3%A9", "%C3%A9", "job.%E2%82%AC%F0%9F%98%80", "x.%00"])
def test_a_callback_token_that_is_not_ascii_is_404(live: Live, token: str) -> None:
    status, body = send(live, "POST", f"/v1/callbacks/{token}".encode(), JSON, b"{}")
    assert (status, code_of(body)) == (404, "not_found")


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        ("GET", b"/v1/jobs", {b"Authorization": b"Bearer \xff"}),
        ("GET", b"/v1/jobs", {**AUTH, b"Accept": b"\xc3("}),
        ("POST", f"/v1/callbacks/{STATIC_TOKEN}".encode(), {b"Content-Type": b"\xff"}),
        ("GET", b"/healthz", {b"X-Anything": b"\xed\xa0\x80"}),
    ],
)
def test_a_header_that_is_not_utf8_is_400_naming_it(
    live: Live, method: str, path: bytes, headers: dict[bytes, bytes]
) -> None:
    status, body = send(live, method, path, headers, b"{}")
    assert (status, code_of(body)) == (400, "invalid_header")
    assert json.loads(body)["error"]["details"][0]["path"].startswith("header.")


@pytest.mark.parametrize("given_id", [b"a" * 129, "é".encode(), "€".encode(), b"\xff"])
def test_a_request_id_that_is_not_short_printable_ascii_is_replaced(
    live: Live, given_id: bytes
) -> None:
    answer = raw_exchange(live[1], http_request("GET", b"/healthz", {b"X-Request-Id": given_id}))
    echoed = [line for line in answer.head.split(b"\r\n") if line.startswith(b"X-Request-Id: ")]
    assert len(echoed) == 1
    assert echoed[0] != b"X-Request-Id: " + given_id
    kept = raw_exchange(live[1], http_request("GET", b"/healthz", {b"X-Request-Id": b"abc-1"}))
    assert b"\r\nX-Request-Id: abc-1\r\n" in kept.head + b"\r\n"


@pytest.mark.parametrize("limit", ["1_0", "%D9%A1", "+5", "%201", "9" * 30])
def test_a_limit_must_be_ascii_digits(live: Live, limit: str) -> None:
    for path in ("/v1/jobs", "/v1/events"):
        status, body = send(live, "GET", f"{path}?limit={limit}".encode(), AUTH)
        assert (status, code_of(body)) == (400, "invalid_parameter")


@pytest.mark.parametrize(
    "path", ["/v1/jobs/%C3%A9", "/v1/jobs/%00", "/v1/jobs/%ED%A0%80", "/v1/jobs/" + "a" * 4000]
)
def test_odd_job_ids_are_404(live: Live, path: str) -> None:
    for method, suffix in (("GET", ""), ("POST", "/cancel"), ("POST", "/retry")):
        status, body = send(live, method, (path + suffix).encode(), AUTH)
        assert (status, code_of(body)) == (404, "job_not_found")


def test_a_callback_whose_parsing_raises_is_refused_and_kept(live: Live) -> None:
    body = task_finish_json("jhuge").replace(b'"JobId"', b'"Huge": ' + HUGE_INT + b', "JobId"', 1)
    before = rejected_rows(live)
    status, answer = send(live, "POST", f"/v1/callbacks/{STATIC_TOKEN}".encode(), JSON, body)
    assert status == 400, answer
    assert rejected_rows(live) == before + 1


def test_a_job_whose_parsing_raises_is_400(live: Live) -> None:
    status, answer = send(
        live, "POST", b"/v1/jobs", {**AUTH, **JSON}, b'{"Name": ' + HUGE_INT + b"}"
    )
    assert (status, code_of(answer)) == (400, "invalid_document"), answer


@PROPERTY_SETTINGS
@given(token=st.text(min_size=1, max_size=200))
def test_any_callback_token_is_404_or_accepted_never_5xx(live: Live, token: str) -> None:
    path = "/v1/callbacks/" + quote(token, safe="")
    status, _ = send(live, "POST", path.encode(), JSON, b"{}")
    assert status in (400, 404), (token, status)


@PROPERTY_SETTINGS
@given(
    body=st.binary(max_size=2048),
    content_type=st.sampled_from([b"", *JSON.values(), b"application/xml"]),
)
def test_any_callback_body_is_answered_below_500_and_a_refusal_is_kept(
    live: Live, body: bytes, content_type: bytes
) -> None:
    before = rejected_rows(live)
    headers = {b"Content-Type": content_type} if content_type else {}
    status, _ = send(live, "POST", f"/v1/callbacks/{STATIC_TOKEN}".encode(), headers, body)
    assert status in (200, 400), (body, status)
    assert rejected_rows(live) == before + (status == 400)


@PROPERTY_SETTINGS
@given(
    body=st.one_of(
        st.binary(max_size=2048),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
            lambda children: (
                st.lists(children, max_size=4)
                | st.dictionaries(st.text(max_size=10), children, max_size=4)
            ),
            max_leaves=20,
        ).map(lambda tree: json.dumps({"Request": tree}).encode()),
    ),
    content_type=st.sampled_from([*JSON.values(), b"application/xml"]),
)
def test_any_job_body_is_answered_below_500(live: Live, body: bytes, content_type: bytes) -> None:
    status, answer = send(live, "POST", b"/v1/jobs", {**AUTH, b"Content-Type": content_type}, body)
    assert status in (202, 400, 422), (body, status, answer)
