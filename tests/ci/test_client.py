"""The CI client against a local CI stand-in that verifies every signature."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from service.ci.client import CIClient
from service.ci.errors import (
    CIMalformedResponse,
    CIPermanentError,
    CIRetryableError,
    CIThrottled,
    CITransportError,
)
from service.ci.signing import Credentials, SignatureInvalid, verify
from service.ci.xml import parse_batch_jobs, parse_media_jobs
from service.metrics import Metrics
from service.xmlsafe import DocumentError

NOW = 1_700_000_000
SECRET_ID = "AKIDexampleSecretId0123456789"
SECRET_KEY = "exampleSecretKey"
TOKEN = "sts-session-token+/="
KEYS = {SECRET_ID: SECRET_KEY}
CREDS = Credentials(SECRET_ID, SECRET_KEY)
BUCKET = "examplebucket-1250000000"
REGION = "ap-chongqing"
HOST = f"{BUCKET}.ci.{REGION}.myqcloud.com"
JOB_ID = "be8f65004eb8511eaaed4f377124a303c"

REQUEST_XML = b"""<Request>
<Name>demo</Name>
<Type>Job</Type>
<Input><Prefix>input</Prefix></Input>
<Operation>
<QueueId>p893bcda225bf4945a378da6662e81a89</QueueId>
<Tag>Transcode</Tag>
<JobParam><TemplateId>t1460606b9752148c4ab182f55163ba7cd</TemplateId></JobParam>
<Output><Region>ap-chongqing</Region><Bucket>test-1234567890</Bucket>
<Object>output/${InventoryTriggerJobId}/out.mp4</Object></Output>
</Operation>
</Request>"""

# The seed document's sample answer, with its unclosed </RequestId> typo corrected.
SEED_CREATE_RESPONSE = b"""<Response>
<RequestId>NjJiZDU1ZmZfOTBmYTUwNjRfNzdjY18xYQ==</RequestId>
<JobsDetail>
<Code>Success</Code>
<Type>Job</Type>
<Message/>
<Name>demo</Name>
<JobId>be8f65004eb8511eaaed4f377124a303c</JobId>
<State>Running</State>
<CreationTime>2022-06-27T15:23:10+0800</CreationTime>
<StartTime>2022-06-27T15:23:11+0800</StartTime>
<EndTime>2022-06-27T15:25:10+0800</EndTime>
<Input>
<Prefix>input</Prefix>
</Input>
<Operation>
<TimeInterval>
<Start>2022-02-01T12:00:00+0800</Start>
<End>2022-05-01T12:00:00+0800</End>
</TimeInterval>
<QueueId>p893bcda225bf4945a378da6662e81a89</QueueId>
<UserData>this is my inventorytriggerjob</UserData>
<CallBack>https://www.callback.com</CallBack>
<Tag>Transcode</Tag>
<JobParam>
<TemplateId>t1460606b9752148c4ab182f55163ba7cd</TemplateId>
</JobParam>
<Output>
<Region>ap-chongqing</Region>
<Bucket>test-1234567890</Bucket>
<Object>output/${InventoryTriggerJobId}/out.mp4</Object>
</Output>
<JobLevel>0</JobLevel>
</Operation>
</JobsDetail>
</Response>"""

LIST_RESPONSE = b"""<Response>
<RequestId>list-req</RequestId>
<JobsDetail><JobId>job-a</JobId><Name>nightly</Name><State>Success</State><Type>Job</Type>
<StartTime>2022-06-27T15:23:11+0800</StartTime><EndTime>2022-06-27T15:25:10+0800</EndTime>
</JobsDetail>
<JobsDetail><JobId>job-b</JobId><Name>nightly</Name><State>Submitted</State><Type>Job</Type>
<StartTime>-</StartTime><EndTime>-</EndTime></JobsDetail>
<NextToken>token-2</NextToken>
</Response>"""

MEDIA_JOBS_RESPONSE = """<Response>
<RequestId>media-req</RequestId>
<JobsDetail>
<Code>Success</Code><Message/><JobId>j1</JobId><Tag>Transcode</Tag><State>Success</State>
<CreationTime>2022-06-30T18:47:18+0800</CreationTime><QueueId>p1</QueueId>
<Input><BucketId>examplebucket-1250000000</BucketId><Object>in/视频.mp4</Object>
<CosHeaders><Key>Content-Type</Key><Value>video/mp4</Value></CosHeaders></Input>
<Operation><TemplateId>t1</TemplateId>
<MediaResult><OutputFile><Bucket>b</Bucket><Region>ap-chongqing</Region>
<ObjectName>out/a.mp4</ObjectName>
<Md5Info><ObjectName>out/a.mp4</ObjectName><Md5>abc</Md5></Md5Info>
</OutputFile></MediaResult>
</Operation>
</JobsDetail>
<NonExistJobIds>j2</NonExistJobIds>
<NextToken/>
</Response>""".encode()


def _error(code: str, message: str = "m") -> bytes:
    return (
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        f"<RequestId>err-req</RequestId><TraceId>err-trace</TraceId></Error>"
    ).encode()


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    signed_headers: list[str]
    signed_params: list[str]


class FakeCI:
    """Answers like CI after checking the signature the way CI does."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.status = 200
        self.body = b"<Response><RequestId>ok</RequestId></Response>"
        self.headers: dict[str, str] = {"x-ci-request-id": "hdr-req"}
        self.arrived = asyncio.Event()
        self.release: asyncio.Event | None = None

    def answer(self, status: int, body: bytes, **headers: str) -> None:
        self.status, self.body = status, body
        self.headers.update(headers)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        authorization = request.headers.get("Authorization", "")
        try:
            verify(
                authorization,
                request.method,
                request.path,
                request.query,
                request.headers,
                KEYS.get,
                now=NOW,
            )
        except SignatureInvalid as exc:
            return web.Response(status=403, body=_error(exc.code, exc.message))
        fields = dict(part.split("=", 1) for part in authorization.split("&"))
        self.seen.append(
            Seen(
                request.method,
                request.path,
                dict(request.query),
                dict(request.headers),
                body,
                fields["q-header-list"].split(";"),
                [p for p in fields["q-url-param-list"].split(";") if p],
            )
        )
        self.arrived.set()
        if self.release is not None:
            await self.release.wait()
        return web.Response(status=self.status, body=self.body, headers=self.headers)


@pytest.fixture
async def fake(aiohttp_server: Any) -> FakeCI:
    ci = FakeCI()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", ci.handle)
    ci.server = await aiohttp_server(app)  # type: ignore[attr-defined]
    return ci


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


def _endpoint(fake: FakeCI) -> str:
    return str(fake.server.make_url("/"))  # type: ignore[attr-defined]


@pytest.fixture
def ci_client(session: aiohttp.ClientSession, fake: FakeCI, metrics: Metrics) -> CIClient:
    return CIClient(session, CREDS, endpoint=_endpoint(fake), metrics=metrics, clock=lambda: NOW)


def _count(metrics: Metrics, operation: str, status: str) -> float:
    value = metrics.registry.get_sample_value(
        "cirelay_ci_requests_total", {"operation": operation, "status": status}
    )
    return value or 0.0


def _throttled(metrics: Metrics) -> float:
    return metrics.registry.get_sample_value("cirelay_ci_throttled_total") or 0.0


# --- create -------------------------------------------------------------------------------------


async def test_create_posts_signed_xml_and_returns_the_job(
    ci_client: CIClient, fake: FakeCI, metrics: Metrics
) -> None:
    fake.answer(200, SEED_CREATE_RESPONSE)
    job = await ci_client.create(BUCKET, REGION, REQUEST_XML)

    (seen,) = fake.seen
    assert (seen.method, seen.path, seen.query, seen.body) == (
        "POST",
        "/inventorytriggerjob",
        {},
        REQUEST_XML,
    )
    assert seen.headers["Host"] == HOST
    assert seen.headers["Content-Type"] == "application/xml"
    md5 = base64.b64encode(hashlib.md5(REQUEST_XML).digest()).decode()
    assert seen.headers["Content-MD5"] == md5
    assert seen.signed_headers == ["content-length", "content-md5", "content-type", "host"]
    assert seen.signed_params == []

    assert job.job_id == JOB_ID
    assert (job.name, job.state, job.type, job.code, job.message) == (
        "demo",
        "Running",
        "Job",
        "Success",
        "",
    )
    assert (job.creation_time, job.start_time, job.end_time) == (
        "2022-06-27T15:23:10+0800",
        "2022-06-27T15:23:11+0800",
        "2022-06-27T15:25:10+0800",
    )
    assert job.detail["Operation"]["Output"]["Object"] == "output/${InventoryTriggerJobId}/out.mp4"
    assert job.detail["Operation"]["TimeInterval"]["Start"] == "2022-02-01T12:00:00+0800"
    assert _count(metrics, "create", "200") == 1
    duration = metrics.registry.get_sample_value(
        "cirelay_ci_request_duration_seconds_count", {"operation": "create"}
    )
    assert duration == 1


async def test_sts_token_is_sent_and_signed(session: aiohttp.ClientSession, fake: FakeCI) -> None:
    sts = CIClient(
        session,
        Credentials(SECRET_ID, SECRET_KEY, TOKEN),
        endpoint=_endpoint(fake),
        clock=lambda: NOW,
    )
    fake.answer(200, SEED_CREATE_RESPONSE)
    await sts.create(BUCKET, REGION, REQUEST_XML)
    (seen,) = fake.seen
    assert seen.headers["x-ci-security-token"] == TOKEN
    assert "x-ci-security-token" in seen.signed_headers


async def test_create_with_unreadable_success_is_in_doubt(
    ci_client: CIClient, fake: FakeCI, metrics: Metrics
) -> None:
    fake.answer(200, b"<Response><JobsDetail><JobId>x</Job")
    with pytest.raises(CIMalformedResponse) as caught:
        await ci_client.create(BUCKET, REGION, REQUEST_XML)
    assert caught.value.in_doubt
    assert caught.value.retryable
    assert caught.value.status == 200
    assert caught.value.request_id == "hdr-req"
    assert _count(metrics, "create", "200") == 1


@pytest.mark.parametrize(
    "body",
    [
        b"<Response><RequestId>r</RequestId></Response>",
        b"<Response><JobsDetail><Name>no id</Name></JobsDetail></Response>",
        b"<Response><JobsDetail><JobId>a</JobId></JobsDetail>"
        b"<JobsDetail><JobId>b</JobId></JobsDetail></Response>",
        b"<Other><JobsDetail><JobId>a</JobId></JobsDetail></Other>",
        b"<Response><JobsDetail>text</JobsDetail></Response>",
    ],
    ids=["no-job", "no-job-id", "two-jobs", "wrong-root", "text-detail"],
)
async def test_create_rejects_answers_without_exactly_one_job(
    ci_client: CIClient, fake: FakeCI, body: bytes
) -> None:
    fake.answer(200, body)
    with pytest.raises(CIMalformedResponse) as caught:
        await ci_client.create(BUCKET, REGION, REQUEST_XML)
    assert caught.value.in_doubt


# --- get ----------------------------------------------------------------------------------------


async def test_get_returns_the_job(ci_client: CIClient, fake: FakeCI) -> None:
    fake.answer(200, SEED_CREATE_RESPONSE)
    job = await ci_client.get(BUCKET, REGION, JOB_ID)
    assert job is not None
    assert job.job_id == JOB_ID
    (seen,) = fake.seen
    assert (seen.method, seen.path, seen.query, seen.body) == (
        "GET",
        f"/inventorytriggerjob/{JOB_ID}",
        {},
        b"",
    )
    assert seen.headers["Host"] == HOST
    assert seen.signed_headers == ["host"]
    assert "Content-Type" not in seen.headers


@pytest.mark.parametrize("element", ["NonExistJobIds", "NonExistJobId"])
async def test_get_returns_none_when_ci_disowns_the_id(
    ci_client: CIClient, fake: FakeCI, element: str
) -> None:
    body = f"<Response><RequestId>r</RequestId><{element}>{JOB_ID}</{element}></Response>"
    fake.answer(200, body.encode())
    assert await ci_client.get(BUCKET, REGION, JOB_ID) is None


async def test_get_returns_none_on_404_resource_not_found(
    ci_client: CIClient, fake: FakeCI, metrics: Metrics
) -> None:
    fake.answer(404, _error("ResourceNotFound"))
    assert await ci_client.get(BUCKET, REGION, JOB_ID) is None
    assert _count(metrics, "get", "404") == 1


async def test_get_raises_on_other_404(ci_client: CIClient, fake: FakeCI) -> None:
    fake.answer(404, _error("NoSuchBucket"))
    with pytest.raises(CIPermanentError) as caught:
        await ci_client.get(BUCKET, REGION, JOB_ID)
    assert caught.value.code == "NoSuchBucket"


async def test_get_refuses_to_guess_on_an_empty_answer(ci_client: CIClient, fake: FakeCI) -> None:
    fake.answer(200, b"<Response><RequestId>r</RequestId></Response>")
    with pytest.raises(CIMalformedResponse, match="neither describes nor disowns"):
        await ci_client.get(BUCKET, REGION, JOB_ID)


async def test_get_refuses_another_jobs_answer(ci_client: CIClient, fake: FakeCI) -> None:
    fake.answer(200, SEED_CREATE_RESPONSE)
    with pytest.raises(CIMalformedResponse):
        await ci_client.get(BUCKET, REGION, "some-other-job")


# --- list ---------------------------------------------------------------------------------------


async def test_list_defaults_to_job_type(ci_client: CIClient, fake: FakeCI) -> None:
    fake.answer(200, LIST_RESPONSE)
    page = await ci_client.list(BUCKET, REGION)
    (seen,) = fake.seen
    assert (seen.method, seen.path) == ("GET", "/inventorytriggerjob")
    assert seen.query == {"type": "Job", "size": "10", "orderByTime": "Desc"}
    assert sorted(seen.signed_params) == ["orderbytime", "size", "type"]
    assert [job.job_id for job in page.jobs] == ["job-a", "job-b"]
    assert page.jobs[1].start_time == "-"
    assert (page.next_token, page.request_id) == ("token-2", "list-req")


async def test_list_sends_every_filter(ci_client: CIClient, fake: FakeCI) -> None:
    await ci_client.list(
        BUCKET,
        REGION,
        type="Workflow",
        name="夜间 run+1&x=y",
        states=["Running", "Failed"],
        size=100,
        next_token="tok/en==",
        order_by_time="Asc",
        start_creation_time="2024-01-01T00:00:00+0800",
        end_creation_time="2024-01-02T00:00:00+0800",
        workflow_id="w1",
        job_id="j1",
    )
    (seen,) = fake.seen
    assert seen.query == {
        "type": "Workflow",
        "name": "夜间 run+1&x=y",
        "states": "Running,Failed",
        "size": "100",
        "nextToken": "tok/en==",
        "orderByTime": "Asc",
        "startCreationTime": "2024-01-01T00:00:00+0800",
        "endCreationTime": "2024-01-02T00:00:00+0800",
        "workflowId": "w1",
        "jobId": "j1",
    }
    assert len(seen.signed_params) == len(seen.query)


async def test_list_empty_page(ci_client: CIClient, fake: FakeCI) -> None:
    fake.answer(200, b"<Response><RequestId>r</RequestId><JobsDetail/><NextToken/></Response>")
    page = await ci_client.list(BUCKET, REGION, name="none")
    assert (page.jobs, page.next_token) == ((), "")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size": 0}, "size"),
        ({"size": 101}, "size"),
        ({"states": ["Running", "Done"]}, "unknown states"),
        ({"order_by_time": "desc"}, "order_by_time"),
        ({"type": "job"}, "type"),
    ],
)
async def test_list_rejects_bad_filters(
    ci_client: CIClient, fake: FakeCI, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        await ci_client.list(BUCKET, REGION, **kwargs)
    assert fake.seen == []


# --- cancel -------------------------------------------------------------------------------------


async def test_cancel_puts_unsigned_cancel(
    ci_client: CIClient, fake: FakeCI, metrics: Metrics
) -> None:
    await ci_client.cancel(BUCKET, REGION, JOB_ID)
    (seen,) = fake.seen
    assert (seen.method, seen.path, seen.query, seen.body) == (
        "PUT",
        f"/inventorytriggerjob/{JOB_ID}",
        {"cancel": ""},
        b"",
    )
    assert seen.signed_params == []
    assert seen.signed_headers == ["content-length", "host"]
    assert seen.headers["Content-Length"] == "0"
    assert _count(metrics, "cancel", "200") == 1


# --- media jobs ---------------------------------------------------------------------------------


async def test_get_media_jobs(ci_client: CIClient, fake: FakeCI) -> None:
    fake.answer(200, MEDIA_JOBS_RESPONSE)
    page = await ci_client.get_media_jobs(BUCKET, REGION, ["j1", "j2"])
    (seen,) = fake.seen
    assert (seen.method, seen.path, seen.query) == ("GET", "/jobs/j1,j2", {})
    assert page.non_exist_job_ids == ("j2",)
    assert page.request_id == "media-req"
    assert page.next_token == ""
    (job,) = page.jobs
    assert job["JobId"] == "j1"
    assert job["Input"]["Object"] == "in/视频.mp4"
    assert job["Input"]["CosHeaders"] == [{"Key": "Content-Type", "Value": "video/mp4"}]
    output = job["Operation"]["MediaResult"]["OutputFile"]
    assert output["ObjectName"] == ["out/a.mp4"]
    assert output["Md5Info"] == [{"ObjectName": "out/a.mp4", "Md5": "abc"}]


async def test_list_media_jobs_of_a_batch(ci_client: CIClient, fake: FakeCI) -> None:
    fake.answer(200, MEDIA_JOBS_RESPONSE)
    page = await ci_client.list_media_jobs(
        BUCKET,
        REGION,
        tag="Transcode",
        inventory_trigger_job_id=JOB_ID,
        queue_id="p1",
        states=["Success", "Failed"],
        size=50,
        next_token="n1",
        start_creation_time="2024-01-01T00:00:00+0800",
    )
    (seen,) = fake.seen
    assert (seen.method, seen.path) == ("GET", "/jobs")
    assert seen.query == {
        "tag": "Transcode",
        "inventoryTriggerJobId": JOB_ID,
        "queueId": "p1",
        "states": "Success,Failed",
        "size": "50",
        "nextToken": "n1",
        "orderByTime": "Desc",
        "startCreationTime": "2024-01-01T00:00:00+0800",
    }
    assert [job["JobId"] for job in page.jobs] == ["j1"]


async def test_list_media_jobs_requires_tag(ci_client: CIClient, fake: FakeCI) -> None:
    with pytest.raises(ValueError, match="tag"):
        await ci_client.list_media_jobs(BUCKET, REGION, tag="")
    assert fake.seen == []


async def test_cancel_media_job(ci_client: CIClient, fake: FakeCI) -> None:
    await ci_client.cancel_media_job(BUCKET, REGION, "j1")
    (seen,) = fake.seen
    assert (seen.method, seen.path, seen.query) == ("PUT", "/jobs/j1", {"cancel": ""})


# --- errors -------------------------------------------------------------------------------------


async def test_400_invalid_argument_is_permanent(
    ci_client: CIClient, fake: FakeCI, metrics: Metrics
) -> None:
    fake.answer(400, _error("InvalidArgument", "Request.Name is invalid"))
    with pytest.raises(CIPermanentError) as caught:
        await ci_client.create(BUCKET, REGION, REQUEST_XML)
    error = caught.value
    assert (error.status, error.code) == (400, "InvalidArgument")
    assert error.message == "Request.Name is invalid"
    assert (error.request_id, error.trace_id) == ("err-req", "err-trace")
    assert not error.retryable
    assert not error.in_doubt
    assert _count(metrics, "create", "400") == 1
    assert _throttled(metrics) == 0


async def test_403_bad_credentials_is_permanent(
    session: aiohttp.ClientSession, fake: FakeCI
) -> None:
    wrong = CIClient(
        session, Credentials(SECRET_ID, "wrong-key"), endpoint=_endpoint(fake), clock=lambda: NOW
    )
    with pytest.raises(CIPermanentError) as caught:
        await wrong.create(BUCKET, REGION, REQUEST_XML)
    assert (caught.value.status, caught.value.code) == (403, "SignatureDoesNotMatch")
    assert fake.seen == []


async def test_403_stale_clock_is_permanent(session: aiohttp.ClientSession, fake: FakeCI) -> None:
    stale = CIClient(session, CREDS, endpoint=_endpoint(fake), clock=lambda: NOW - 20000)
    with pytest.raises(CIPermanentError) as caught:
        await stale.list(BUCKET, REGION)
    assert caught.value.code == "SignatureExpired"


@pytest.mark.parametrize(
    ("status", "body"),
    [(429, b""), (503, _error("ServiceUnavailable")), (400, _error("SlowDown"))],
    ids=["429", "503", "SlowDown"],
)
async def test_throttling(
    ci_client: CIClient, fake: FakeCI, metrics: Metrics, status: int, body: bytes
) -> None:
    fake.answer(status, body)
    with pytest.raises(CIThrottled) as caught:
        await ci_client.create(BUCKET, REGION, REQUEST_XML)
    assert caught.value.retryable
    assert caught.value.status == status
    assert not caught.value.in_doubt
    assert _throttled(metrics) == 1
    assert _count(metrics, "create", str(status)) == 1


async def test_500_is_retryable_and_in_doubt(
    ci_client: CIClient, fake: FakeCI, metrics: Metrics
) -> None:
    fake.answer(500, _error("InternalError"))
    with pytest.raises(CIRetryableError) as caught:
        await ci_client.create(BUCKET, REGION, REQUEST_XML)
    assert type(caught.value) is CIRetryableError
    assert caught.value.code == "InternalError"
    assert caught.value.in_doubt
    assert _throttled(metrics) == 0


async def test_non_xml_error_body(ci_client: CIClient, fake: FakeCI) -> None:
    fake.answer(502, b"<html>Bad Gateway</html", **{"Content-Type": "text/html"})
    with pytest.raises(CIRetryableError) as caught:
        await ci_client.list(BUCKET, REGION)
    assert caught.value.status == 502
    assert caught.value.code == ""
    assert caught.value.message == "<html>Bad Gateway</html"
    assert caught.value.request_id == "hdr-req"


async def test_redirect_is_not_followed(ci_client: CIClient, fake: FakeCI) -> None:
    fake.answer(302, b"", Location="http://127.0.0.1:1/elsewhere")
    with pytest.raises(CIPermanentError) as caught:
        await ci_client.get(BUCKET, REGION, JOB_ID)
    assert caught.value.status == 302
    assert len(fake.seen) == 1


async def test_session_raise_for_status_does_not_hide_ci_errors(fake: FakeCI) -> None:
    async with aiohttp.ClientSession(raise_for_status=True) as strict:
        ci = CIClient(strict, CREDS, endpoint=_endpoint(fake), clock=lambda: NOW)
        fake.answer(400, _error("InvalidArgument"))
        with pytest.raises(CIPermanentError) as caught:
            await ci.create(BUCKET, REGION, REQUEST_XML)
    assert caught.value.code == "InvalidArgument"


async def test_connection_refused_is_transport_not_in_doubt(
    session: aiohttp.ClientSession, metrics: Metrics, unused_tcp_port: int
) -> None:
    ci = CIClient(
        session,
        CREDS,
        endpoint=f"http://127.0.0.1:{unused_tcp_port}",
        metrics=metrics,
        clock=lambda: NOW,
    )
    with pytest.raises(CITransportError) as caught:
        await ci.create(BUCKET, REGION, REQUEST_XML)
    error = caught.value
    assert (error.status, error.code, error.retryable, error.in_doubt) == (
        0,
        "ConnectFailed",
        True,
        False,
    )
    assert _count(metrics, "create", "error") == 1


async def test_timeout_after_sending_is_in_doubt(
    session: aiohttp.ClientSession, fake: FakeCI, metrics: Metrics
) -> None:
    fake.release = asyncio.Event()
    ci = CIClient(
        session, CREDS, endpoint=_endpoint(fake), timeout=0.2, metrics=metrics, clock=lambda: NOW
    )
    try:
        with pytest.raises(CITransportError) as caught:
            await ci.create(BUCKET, REGION, REQUEST_XML)
    finally:
        fake.release.set()
    assert fake.arrived.is_set()
    assert (caught.value.code, caught.value.in_doubt) == ("Timeout", True)
    assert _count(metrics, "create", "error") == 1


async def test_connection_lost_after_sending_is_in_doubt(
    session: aiohttp.ClientSession, metrics: Metrics
) -> None:
    received = asyncio.Event()

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        received.set()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        ci = CIClient(
            session, CREDS, endpoint=f"http://127.0.0.1:{port}", metrics=metrics, clock=lambda: NOW
        )
        with pytest.raises(CITransportError) as caught:
            await ci.create(BUCKET, REGION, REQUEST_XML)
    assert received.is_set()
    assert (caught.value.code, caught.value.in_doubt) == ("ConnectionError", True)
    assert _count(metrics, "create", "error") == 1


async def test_oversized_answer_is_refused(ci_client: CIClient, fake: FakeCI) -> None:
    fake.answer(200, b"<Response>" + b" " * (16 * 1024 * 1024) + b"</Response>")
    with pytest.raises(CIMalformedResponse) as caught:
        await ci_client.list(BUCKET, REGION)
    assert (caught.value.code, caught.value.status) == ("ResponseTooLarge", 200)


class _LoopbackResolver(AbstractResolver):
    """Sends every name to one loopback port, so no test traffic leaves the machine."""

    def __init__(self, port: int) -> None:
        self.port = port

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            {
                "hostname": host,
                "host": "127.0.0.1",
                "port": self.port,
                "family": socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
        ]

    async def close(self) -> None:
        return None


async def test_default_endpoint_is_the_bucket_host_over_https(unused_tcp_port: int) -> None:
    started: list[tuple[str, str]] = []

    async def on_start(
        _: Any, __: SimpleNamespace, params: aiohttp.TraceRequestStartParams
    ) -> None:
        started.append((str(params.url), params.headers["Host"]))

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_start)
    connector = aiohttp.TCPConnector(resolver=_LoopbackResolver(unused_tcp_port))
    async with aiohttp.ClientSession(connector=connector, trace_configs=[trace]) as s:
        ci = CIClient(s, CREDS, clock=lambda: NOW)
        with pytest.raises(CITransportError) as caught:
            await ci.get(BUCKET, REGION, JOB_ID)
    assert started == [(f"https://{HOST}/inventorytriggerjob/{JOB_ID}", HOST)]
    assert not caught.value.in_doubt


# --- arguments checked before anything is sent -------------------------------------------------


@pytest.mark.parametrize(
    ("bucket", "region", "job_id"),
    [
        ("Bad_Bucket", REGION, JOB_ID),
        ("evil.com/x", REGION, JOB_ID),
        (BUCKET, "ap chongqing", JOB_ID),
        (BUCKET, "", JOB_ID),
        (BUCKET, REGION, "a/b"),
        (BUCKET, REGION, "a?cancel"),
        (BUCKET, REGION, ""),
    ],
)
async def test_invalid_names_are_refused(
    ci_client: CIClient, fake: FakeCI, bucket: str, region: str, job_id: str
) -> None:
    with pytest.raises(ValueError, match="invalid"):
        await ci_client.get(bucket, region, job_id)
    assert fake.seen == []


async def test_empty_arguments_are_refused(ci_client: CIClient, fake: FakeCI) -> None:
    with pytest.raises(ValueError, match="request_xml"):
        await ci_client.create(BUCKET, REGION, b"  ")
    with pytest.raises(ValueError, match="job_ids"):
        await ci_client.get_media_jobs(BUCKET, REGION, [])
    with pytest.raises(ValueError, match="invalid job id"):
        await ci_client.get_media_jobs(BUCKET, REGION, ["j1", "j2,j3"])
    assert fake.seen == []


@pytest.mark.parametrize(
    "endpoint",
    ["ftp://127.0.0.1:8090", "127.0.0.1:8090", "http://127.0.0.1:8090/ci", "http://h/?q=1"],
)
def test_invalid_endpoint_is_refused(session: aiohttp.ClientSession, endpoint: str) -> None:
    with pytest.raises(ValueError, match="endpoint"):
        CIClient(session, CREDS, endpoint=endpoint)


# --- response parsing ---------------------------------------------------------------------------


def test_batch_job_page_parses_seed_answer() -> None:
    page = parse_batch_jobs(SEED_CREATE_RESPONSE)
    assert page.request_id == "NjJiZDU1ZmZfOTBmYTUwNjRfNzdjY18xYQ=="
    assert [job.job_id for job in page.jobs] == [JOB_ID]
    assert page.non_exist_job_ids == ()


def test_non_exist_ids_accept_repeats_and_comma_lists() -> None:
    body = (
        b"<Response><NonExistJobIds>a</NonExistJobIds><NonExistJobIds>b,c</NonExistJobIds>"
        b"<NonExistJobIds/></Response>"
    )
    assert parse_media_jobs(body).non_exist_job_ids == ("a", "b", "c")


def test_sprite_output_object_names_are_lists_and_stream_extract_too() -> None:
    body = b"""<Response><JobsDetail><JobId>j</JobId><Operation>
    <Output><StreamExtract><Index>0</Index><Object>a.mp4</Object></StreamExtract></Output>
    <MediaResult><OutputFile><ObjectName>a</ObjectName><ObjectName>b</ObjectName>
    <SpriteOutputFile><ObjectName>s.jpg</ObjectName></SpriteOutputFile></OutputFile></MediaResult>
    </Operation></JobsDetail></Response>"""
    (job,) = parse_media_jobs(body).jobs
    output = job["Operation"]["MediaResult"]["OutputFile"]
    assert output["ObjectName"] == ["a", "b"]
    assert output["SpriteOutputFile"]["ObjectName"] == ["s.jpg"]
    assert job["Operation"]["Output"]["StreamExtract"] == [{"Index": "0", "Object": "a.mp4"}]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "empty"),
        (b"<Response><JobsDetail>", "malformed_xml"),
        (b'<!DOCTYPE r [<!ENTITY e "x">]><Response>&e;</Response>', "doctype"),
        (b"<Error><Code>x</Code></Error>", "unexpected_shape"),
    ],
)
def test_parse_refuses_bad_documents(body: bytes, reason: str) -> None:
    with pytest.raises(DocumentError) as caught:
        parse_batch_jobs(body)
    assert caught.value.reason == reason
