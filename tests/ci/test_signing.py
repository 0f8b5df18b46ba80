"""COS v5 signing: byte-identical to the official SDK, and a verifier that catches tampering."""

from __future__ import annotations

import asyncio
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
from aiohttp import web
from qcloud_cos import CosConfig, CosS3Client, cos_auth

from service.ci.signing import Credentials, SignatureInvalid, sign, signed_headers, verify

NOW = 1_700_000_000
SECRET_ID = "AKIDexampleSecretId0123456789"
SECRET_KEY = "exampleSecretKey/with+chars="
TOKEN = "sts-token/with+reserved=chars&more"
REGION = "ap-chongqing"
BUCKET = "examplebucket-1250000000"
HOST = f"{BUCKET}.ci.{REGION}.myqcloud.com"
KEYS = {SECRET_ID: SECRET_KEY}
CREDS = Credentials(SECRET_ID, SECRET_KEY)
STS_CREDS = Credentials(SECRET_ID, SECRET_KEY, TOKEN)
BODY = b"<Request><Name>demo</Name><Type>Job</Type></Request>"


@pytest.fixture
def sdk_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Freeze the clock the SDK signs with, and nothing else's."""
    monkeypatch.setattr(cos_auth, "time", types.SimpleNamespace(time=lambda: float(NOW)))


@dataclass(frozen=True)
class Case:
    id: str
    method: str
    path: str
    params: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    creds: Credentials = CREDS
    expires: int = 10000


CASES = [
    Case(
        "post-with-body-headers",
        "POST",
        "/inventorytriggerjob",
        headers={
            "Host": HOST,
            "Content-Type": "application/xml",
            "Content-MD5": "Q2hlY2sgSW50ZWdyaXR5IQ==",
            "User-Agent": "not-signed/1.0",
            "Accept": "*/*",
        },
        body=BODY,
    ),
    Case(
        "get-list-filters",
        "GET",
        "/inventorytriggerjob",
        params={
            "type": "Job",
            "orderByTime": "Desc",
            "states": "Running,Failed",
            "size": "100",
            "nextToken": "",
            "name": "nightly_2024-01",
            "startCreationTime": "2024-01-01T00:00:00+0800",
        },
        headers={"Host": HOST},
    ),
    Case(
        "put-cancel",
        "PUT",
        "/inventorytriggerjob/be8f65004eb8511eaaed4f377124a303c",
        headers={"Host": HOST, "Content-Length": "0"},
    ),
    Case(
        "sts-token",
        "GET",
        "/jobs/j1,j2",
        headers={"Host": HOST, "x-ci-security-token": TOKEN},
        creds=STS_CREDS,
    ),
    Case(
        "non-ascii-key-and-reserved-params",
        "GET",
        "/视频/测试 文件 (1)+%.mp4",
        params={
            "prefix": "a b&c=d/é+~%?#",
            "Upper-Key": "Mixed Case",
            "名字": "值 value",
            "ci-process": "",
        },
        headers={"Host": HOST},
    ),
    Case(
        "sdk-signed-header-set",
        "PUT",
        "/object key",
        headers={
            "Host": HOST,
            "Cache-Control": "no-cache",
            "If-Match": '"etag"',
            "Range": "bytes=0-9",
            "x-cos-meta-author": "作者 name",
            "X-CI-Custom": "v",
            "Connection": "keep-alive",
            "Date": "Mon, 28 Jun 2022 15:23:12 GMT",
        },
        body=b"0123456789",
    ),
    Case("short-expiry", "GET", "inventorytriggerjob", headers={"Host": HOST}, expires=600),
]


def _sdk_sign(case: Case) -> tuple[str, dict[str, str]]:
    """The SDK's Authorization for ``case``, and the headers it saw (requests adds some)."""
    conf = CosConfig(Region=REGION, SecretId=case.creds.secret_id, SecretKey=case.creds.secret_key)
    prepared = requests.Request(
        case.method, f"https://{HOST}/ignored", headers=case.headers, data=case.body
    ).prepare()
    auth = cos_auth.CosS3Auth(conf, case.path, params=dict(case.params), expire=case.expires)
    signed = auth(prepared)
    headers = {k: v for k, v in signed.headers.items() if k != "Authorization"}
    return signed.headers["Authorization"], headers


@pytest.mark.usefixtures("sdk_clock")
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_sign_is_byte_identical_to_sdk(case: Case) -> None:
    expected, headers = _sdk_sign(case)
    actual = sign(
        case.creds, case.method, case.path, case.params, headers, now=NOW, expires=case.expires
    )
    assert actual == expected


@pytest.mark.usefixtures("sdk_clock")
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_verify_accepts_sdk_signature(case: Case) -> None:
    authorization, headers = _sdk_sign(case)
    path = case.path if case.path.startswith("/") else "/" + case.path
    assert verify(authorization, case.method, path, case.params, headers, KEYS.get, now=NOW) == (
        SECRET_ID
    )


@pytest.mark.usefixtures("sdk_clock")
def test_sdk_takes_host_from_url_like_sign_from_header() -> None:
    conf = CosConfig(Region=REGION, SecretId=SECRET_ID, SecretKey=SECRET_KEY)
    prepared = requests.Request("GET", f"https://{HOST}/jobs").prepare()
    expected = cos_auth.CosS3Auth(conf, "/jobs", params={})(prepared).headers["Authorization"]
    assert sign(CREDS, "GET", "/jobs", {}, {"Host": HOST}, now=NOW) == expected


def test_sign_names_the_window_lists_and_secret_id() -> None:
    auth = sign(CREDS, "GET", "/jobs", {"Tag": "Transcode"}, {"Host": HOST, "Accept": "x"}, now=NOW)
    fields = dict(part.split("=", 1) for part in auth.split("&"))
    assert fields["q-sign-algorithm"] == "sha1"
    assert fields["q-ak"] == SECRET_ID
    assert fields["q-sign-time"] == fields["q-key-time"] == f"{NOW - 60};{NOW + 10000}"
    assert fields["q-header-list"] == "host"
    assert fields["q-url-param-list"] == "tag"
    assert len(fields["q-signature"]) == 40
    assert SECRET_KEY not in auth


def test_signed_headers_follow_the_sdk_list() -> None:
    headers = {
        "Host": "h",
        "Content-Type": "application/xml",
        "content-length": "3",
        "Content-MD5": "m",
        "x-cos-acl": "private",
        "X-Ci-Security-Token": "t",
        "Range": "bytes=0-1",
        "User-Agent": "ua",
        "Authorization": "a",
        "Date": "d",
        "x-amz-date": "no",
    }
    assert set(signed_headers(headers)) == {
        "Host",
        "Content-Type",
        "content-length",
        "Content-MD5",
        "x-cos-acl",
        "X-Ci-Security-Token",
        "Range",
    }


def test_sign_refuses_missing_host() -> None:
    with pytest.raises(ValueError, match="Host"):
        sign(CREDS, "GET", "/jobs", {}, {"Content-Type": "application/xml"}, now=NOW)


def test_sign_refuses_token_credentials_without_token_header() -> None:
    with pytest.raises(ValueError, match="x-ci-security-token"):
        sign(STS_CREDS, "GET", "/jobs", {}, {"Host": HOST}, now=NOW)
    with pytest.raises(ValueError, match="x-ci-security-token"):
        sign(STS_CREDS, "GET", "/jobs", {}, {"Host": HOST, "x-ci-security-token": "other"}, now=NOW)


def test_credentials_repr_hides_secrets() -> None:
    text = repr(STS_CREDS)
    assert SECRET_ID in text
    assert SECRET_KEY not in text
    assert TOKEN not in text


# --- verify() against tampering ---------------------------------------------------------------

PARAMS = {"type": "Job", "name": "nightly run/é", "size": "10"}
HEADERS = {"Host": HOST, "Content-Type": "application/xml", "Content-Length": "52"}
OTHER_HOST = "other-1250000000.ci.ap-chongqing.myqcloud.com"


def _signed() -> str:
    return sign(CREDS, "POST", "/inventorytriggerjob", PARAMS, HEADERS, now=NOW)


def _verify(
    authorization: str | None = None,
    *,
    method: str = "POST",
    path: str = "/inventorytriggerjob",
    params: Mapping[str, str] = PARAMS,
    headers: Mapping[str, str] = HEADERS,
    keys: Mapping[str, str] = KEYS,
    now: int = NOW,
) -> str:
    return verify(
        _signed() if authorization is None else authorization,
        method,
        path,
        params,
        headers,
        keys.get,
        now=now,
    )


def _replace_field(authorization: str, name: str, value: str) -> str:
    parts = [
        f"{name}={value}" if part.startswith(name + "=") else part
        for part in authorization.split("&")
    ]
    return "&".join(parts)


def test_verify_accepts_own_signature() -> None:
    assert _verify() == SECRET_ID


def test_verify_is_case_insensitive_on_header_names() -> None:
    assert _verify(headers={k.upper(): v for k, v in HEADERS.items()}) == SECRET_ID


def test_verify_ignores_unsigned_extras() -> None:
    assert _verify(params={**PARAMS, "cancel": ""}) == SECRET_ID
    assert _verify(headers={**HEADERS, "User-Agent": "x", "x-cos-extra": "y"}) == SECRET_ID


def test_verify_accepts_both_edges_of_the_window() -> None:
    assert _verify(now=NOW - 60) == SECRET_ID
    assert _verify(now=NOW + 10000) == SECRET_ID


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"method": "PUT"}, "does not match"),
        ({"path": "/inventorytriggerjob/x"}, "does not match"),
        ({"params": {**PARAMS, "size": "11"}}, "does not match"),
        ({"params": {"type": "Job", "name": "nightly run/é"}}, "signed parameter size is absent"),
        ({"headers": {**HEADERS, "Host": OTHER_HOST}}, "does not match"),
        ({"headers": {"Host": HOST, "Content-Type": "text/xml"}}, "content-length is absent"),
        ({"keys": {SECRET_ID: "another-key"}}, "does not match"),
    ],
    ids=["method", "path", "param-value", "param-absent", "host", "header-absent", "wrong-key"],
)
def test_verify_rejects_tampered_request(change: dict[str, Any], message: str) -> None:
    with pytest.raises(SignatureInvalid, match=message) as caught:
        _verify(**change)
    assert caught.value.code == "SignatureDoesNotMatch"


def test_verify_rejects_altered_signature() -> None:
    auth = _signed()
    signature = auth.rsplit("=", 1)[1]
    flipped = ("0" if signature[0] != "0" else "1") + signature[1:]
    with pytest.raises(SignatureInvalid) as caught:
        _verify(_replace_field(auth, "q-signature", flipped))
    assert caught.value.code == "SignatureDoesNotMatch"


@pytest.mark.parametrize("name", ["q-sign-time", "q-key-time"])
def test_verify_rejects_altered_time_within_window(name: str) -> None:
    auth = _replace_field(_signed(), name, f"{NOW - 61};{NOW + 10000}")
    with pytest.raises(SignatureInvalid) as caught:
        _verify(auth)
    assert caught.value.code == "SignatureDoesNotMatch"


def test_verify_rejects_removed_header_from_list() -> None:
    auth = _replace_field(_signed(), "q-header-list", "content-type;host")
    with pytest.raises(SignatureInvalid) as caught:
        _verify(auth)
    assert caught.value.code == "SignatureDoesNotMatch"


def test_verify_rejects_unknown_secret_id() -> None:
    with pytest.raises(SignatureInvalid, match="does not exist") as caught:
        _verify(keys={})
    assert caught.value.code == "SecretidNotExist"


def test_verify_rejects_expired_signature() -> None:
    with pytest.raises(SignatureInvalid, match="expired") as caught:
        _verify(now=NOW + 10001)
    assert caught.value.code == "SignatureExpired"


def test_verify_rejects_signature_not_yet_valid() -> None:
    with pytest.raises(SignatureInvalid, match="not valid yet") as caught:
        _verify(now=NOW - 61)
    assert caught.value.code == "SignatureExpired"


@pytest.mark.parametrize(
    ("authorization", "message"),
    [
        ("", "malformed field"),
        ("garbage", "malformed field"),
        ("q-sign-algorithm=sha1&q-ak=x", "missing q-sign-time"),
        (_replace_field(_signed(), "q-sign-algorithm", "sha256"), "unsupported q-sign-algorithm"),
        (_replace_field(_signed(), "q-ak", ""), "q-ak is empty"),
        (_replace_field(_signed(), "q-sign-time", "soon"), "q-sign-time must be"),
        (_replace_field(_signed(), "q-key-time", f"{NOW + 5};{NOW}"), "q-key-time must be"),
        (_signed() + "&q-ak=" + SECRET_ID, "q-ak given twice"),
    ],
    ids=["empty", "garbage", "missing", "algorithm", "empty-ak", "window", "reversed", "twice"],
)
def test_verify_rejects_malformed_authorization(authorization: str, message: str) -> None:
    with pytest.raises(SignatureInvalid, match=message) as caught:
        _verify(authorization)
    assert caught.value.code == "InvalidAuthorization"


# --- the real SDK against a local server ------------------------------------------------------


@dataclass
class Captured:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]


@pytest.fixture
def captured() -> list[Captured]:
    return []


@pytest.fixture
async def sdk_client(aiohttp_server: Any, captured: list[Captured], sdk_clock: None) -> CosS3Client:
    async def handle(request: web.Request) -> web.Response:
        await request.read()
        captured.append(
            Captured(request.method, request.path, dict(request.query), dict(request.headers))
        )
        return web.Response(
            body=b"<Response><RequestId>r</RequestId><JobsDetail><JobId>j</JobId></JobsDetail>"
            b"</Response>",
            content_type="application/xml",
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    server = await aiohttp_server(app)
    config = CosConfig(
        Region=REGION,
        SecretId=SECRET_ID,
        SecretKey=SECRET_KEY,
        Token=TOKEN,
        Scheme="http",
        IP="127.0.0.1",
        Port=server.port,
    )
    return CosS3Client(config, retry=0)


SDK_CALLS = {
    "create": lambda c: c.ci_create_inventory_trigger_jobs(
        Bucket=BUCKET, JobBody={"Name": "demo", "Type": "Job", "Input": {"Prefix": "视频/"}}
    ),
    "get": lambda c: c.ci_get_inventory_trigger_jobs(Bucket=BUCKET, JobID="jid123"),
    "list": lambda c: c.ci_list_inventory_trigger_jobs(
        Bucket=BUCKET,
        Type="Job",
        Name="nightly run",
        States="Running,Failed",
        Size=100,
        StartCreationTime="2024-01-01T00:00:00+0800",
    ),
    "cancel": lambda c: c.ci_delete_inventory_trigger_jobs(Bucket=BUCKET, JobId="jid123"),
    "get_media_jobs": lambda c: c.ci_get_media_jobs(Bucket=BUCKET, JobIDs="j1,j2"),
    "list_media_jobs": lambda c: c.ci_list_media_jobs(
        Bucket=BUCKET, Tag="Transcode", QueueId="p1", States="Success"
    ),
    "cancel_media_job": lambda c: c.ci_cancel_jobs(Bucket=BUCKET, JobID="j1"),
}


@pytest.mark.parametrize("call", list(SDK_CALLS), ids=list(SDK_CALLS))
async def test_sdk_requests_verify_and_resign_identically(
    sdk_client: CosS3Client, captured: list[Captured], call: str
) -> None:
    await asyncio.to_thread(SDK_CALLS[call], sdk_client)
    (seen,) = captured
    authorization = seen.headers["Authorization"]
    # The SDK names the bucket in Host even when sent to an address; emulators route by it.
    assert seen.headers["Host"].startswith(BUCKET + ".")
    assert "x-ci-security-token" in authorization.split("q-header-list=")[1].split("&")[0]
    assert (
        verify(authorization, seen.method, seen.path, seen.query, seen.headers, KEYS.get, now=NOW)
        == SECRET_ID
    )
    # ?cancel is appended after signing, so it is the one parameter left out.
    signed_params = {k: v for k, v in seen.query.items() if k != "cancel"}
    resigned = sign(STS_CREDS, seen.method, seen.path, signed_params, seen.headers, now=NOW)
    assert resigned == authorization
