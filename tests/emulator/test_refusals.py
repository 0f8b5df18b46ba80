"""What the emulator refuses, each with CI error XML naming the problem and the right status."""

from __future__ import annotations

import base64
import hashlib
import time
from typing import Any

import aiohttp
import pytest
from qcloud_cos.cos_exception import CosServiceError

from service.ci.signing import Credentials
from service.xmlsafe import parse_xml, unparse_xml
from tests.emulator.conftest import (
    BUCKET,
    SECRET_ID,
    SECRET_KEY,
    Emulator,
    StartEmulator,
    batch_request,
    emulator_settings,
    raw_call,
)
from tests.emulator.test_sdk import create, sdk_call, sdk_error


def error_of(body: bytes) -> dict[str, Any]:
    error: dict[str, Any] = parse_xml(body)["Error"]
    assert set(error) == {"Code", "Message", "RequestId", "TraceId"}
    return error


# -- signatures ---------------------------------------------------------------------------------


async def test_a_wrong_key_is_refused(emulator: Emulator) -> None:
    status, error = await sdk_error(
        emulator.sdk(secret_key="not-the-key").ci_create_inventory_trigger_jobs,
        Bucket=BUCKET,
        JobBody=batch_request(),
    )
    assert (status, error["Code"]) == (403, "SignatureDoesNotMatch")
    assert emulator.stats.batches_created == {}


async def test_an_unknown_secret_id_is_refused(emulator: Emulator) -> None:
    status, error = await sdk_error(
        emulator.sdk(secret_id="AKIDnobody").ci_list_inventory_trigger_jobs,
        Bucket=BUCKET,
        Type="Job",
    )
    assert (status, error["Code"]) == (403, "SecretidNotExist")
    assert "AKIDnobody" in error["Message"]


async def test_an_expired_key_time_is_refused(start_emulator: StartEmulator) -> None:
    # The SDK signs for now-60 … now+10000; an emulator whose clock is past that sees it expired.
    emulator = await start_emulator(clock=lambda: time.time() + 20_000)
    status, error = await sdk_error(
        emulator.sdk().ci_list_inventory_trigger_jobs, Bucket=BUCKET, Type="Job"
    )
    assert (status, error["Code"]) == (403, "SignatureExpired")
    assert "expired" in error["Message"]


async def test_a_key_time_in_the_future_is_refused(start_emulator: StartEmulator) -> None:
    emulator = await start_emulator(clock=lambda: time.time() - 3600)
    status, error = await sdk_error(
        emulator.sdk().ci_list_inventory_trigger_jobs, Bucket=BUCKET, Type="Job"
    )
    assert (status, error["Code"]) == (403, "SignatureExpired")
    assert "not valid yet" in error["Message"]


async def test_a_request_without_authorization_is_refused(emulator: Emulator) -> None:
    status, body, request_id = await raw_call(
        emulator, "GET", "/inventorytriggerjob", params={"type": "Job"}, signed=False
    )
    error = error_of(body)
    assert (status, error["Code"]) == (403, "AccessDenied")
    assert error["RequestId"] == request_id


async def test_a_malformed_authorization_is_refused(emulator: Emulator) -> None:
    status, body, _ = await raw_call(
        emulator,
        "GET",
        "/inventorytriggerjob",
        params={"type": "Job"},
        signed=False,
        headers={"Authorization": "q-sign-algorithm=sha1&q-ak=" + SECRET_ID},
    )
    assert (status, error_of(body)["Code"]) == (403, "InvalidAuthorization")


async def test_a_tampered_parameter_breaks_the_signature(emulator: Emulator) -> None:
    sdk = emulator.sdk()
    auth = sdk.get_auth(
        Method="GET",
        Bucket=BUCKET,
        Key="inventorytriggerjob",
        Params={"type": "Job", "size": "10"},
        UseCiEndPoint=True,
    )
    host = f"{BUCKET}.cos.ap-guangzhou.myqcloud.com"
    url = f"{emulator.endpoint}/inventorytriggerjob?type=Job&size=99"
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, headers={"Authorization": auth, "Host": host}) as response,
    ):
        body = await response.read()
        assert response.status == 403
    assert error_of(body)["Code"] == "SignatureDoesNotMatch"


async def test_sts_credentials_need_their_token(start_emulator: StartEmulator) -> None:
    settings = emulator_settings(emulator_credentials=f"{SECRET_ID}:{SECRET_KEY}:sts-token")
    emulator = await start_emulator(settings)

    accepted = await create(emulator.sdk(token="sts-token"))
    wrong_status, wrong = await sdk_error(
        emulator.sdk(token="other-token").ci_create_inventory_trigger_jobs,
        Bucket=BUCKET,
        JobBody=batch_request(),
    )
    none_status, none = await sdk_error(
        emulator.sdk().ci_create_inventory_trigger_jobs, Bucket=BUCKET, JobBody=batch_request()
    )

    assert accepted["State"]
    assert (wrong_status, wrong["Code"]) == (403, "InvalidAuthorization")
    assert "x-ci-security-token" in wrong["Message"]
    assert (none_status, none["Code"]) == (403, "InvalidAuthorization")


async def test_a_host_without_a_bucket_is_refused(emulator: Emulator) -> None:
    status, body, _ = await raw_call(
        emulator, "GET", "/inventorytriggerjob", params={"type": "Job"}, host="127.0.0.1"
    )
    error = error_of(body)
    assert (status, error["Code"]) == (400, "InvalidArgument")
    assert "Host" in error["Message"]


# -- request documents --------------------------------------------------------------------------


def without(tree: dict[str, Any], node: str) -> dict[str, Any]:
    tree["Operation"].pop(node)
    return tree


@pytest.mark.parametrize(
    ("body", "paths"),
    [
        (without(batch_request(), "Tag"), ["Request.Operation.Tag"]),
        (without(batch_request(), "QueueId"), ["Request.Operation.QueueId"]),
        (batch_request(Name="not a valid name!"), ["Request.Name"]),
        (batch_request(Tag="Transcod"), ["Request.Operation.Tag"]),
        (batch_request(JobLevel="5"), ["Request.Operation.JobLevel"]),
        (batch_request(Input={}), ["Request.Input"]),
        (batch_request(CallBackType="TDMQ"), ["Request.Operation.CallBackMqConfig"]),
        (batch_request(CallBackFormat="YAML"), ["Request.Operation.CallBackFormat"]),
        (
            batch_request(TimeInterval={"Start": "2022-02-01 12:00"}),
            ["Request.Operation.TimeInterval.Start"],
        ),
        (
            batch_request(Output={"Region": "ap-chongqing", "Bucket": "test-1234567890"}),
            ["Request.Operation.Output.Object"],
        ),
        (
            batch_request(Name="bad name", JobLevel="9", CallBackType="TDMQ"),
            [
                "Request.Name",
                "Request.Operation.JobLevel",
                "Request.Operation.CallBackMqConfig",
            ],
        ),
    ],
)
async def test_invalid_requests_are_refused_naming_every_node(
    emulator: Emulator, body: dict[str, Any], paths: list[str]
) -> None:
    status, error = await sdk_error(
        emulator.sdk().ci_create_inventory_trigger_jobs, Bucket=BUCKET, JobBody=body
    )
    assert (status, error["Code"]) == (400, "InvalidArgument")
    for path in paths:
        assert f"{path}:" in error["Message"]
    assert emulator.stats.batches_created == {}


@pytest.mark.parametrize(
    "body",
    [
        b"<Request><Name>demo</Name>",
        b'<!DOCTYPE x [<!ENTITY a "b">]><Request><Name>&a;</Name></Request>',
        b'{"Request": {"Name": "demo"}}',
        b"",
    ],
)
async def test_malformed_documents_are_refused(emulator: Emulator, body: bytes) -> None:
    status, answer, _ = await raw_call(emulator, "POST", "/inventorytriggerjob", body=body)
    assert (status, error_of(answer)["Code"]) == (400, "MalformedXML")


async def test_a_document_with_another_root_is_invalid(emulator: Emulator) -> None:
    body = unparse_xml({"Job": batch_request()})
    status, answer, _ = await raw_call(emulator, "POST", "/inventorytriggerjob", body=body)
    error = error_of(answer)
    assert (status, error["Code"]) == (400, "InvalidArgument")
    assert "Request:" in error["Message"]


async def test_a_body_that_does_not_match_its_content_md5_is_refused(emulator: Emulator) -> None:
    body = unparse_xml({"Request": batch_request()})
    digest = base64.b64encode(hashlib.md5(b"something else").digest()).decode()
    status, answer, _ = await raw_call(
        emulator, "POST", "/inventorytriggerjob", body=body, headers={"Content-MD5": digest}
    )
    assert (status, error_of(answer)["Code"]) == (400, "InvalidDigest")


async def test_a_body_over_the_size_limit_is_refused(start_emulator: StartEmulator) -> None:
    emulator = await start_emulator(emulator_settings(max_body_bytes=1024))
    body = unparse_xml({"Request": batch_request(UserData="x" * 2048)})
    status, answer, _ = await raw_call(emulator, "POST", "/inventorytriggerjob", body=body)
    assert (status, error_of(answer)["Code"]) == (413, "EntityTooLarge")


# -- routes -------------------------------------------------------------------------------------


async def test_an_unknown_route_is_not_found(emulator: Emulator) -> None:
    status, body, _ = await raw_call(emulator, "GET", "/workflow")
    error = error_of(body)
    assert (status, error["Code"]) == (404, "ResourceNotFound")
    assert "/workflow" in error["Message"]


async def test_a_wrong_method_is_not_allowed(emulator: Emulator) -> None:
    status, body, _ = await raw_call(emulator, "DELETE", "/inventorytriggerjob")
    assert (status, error_of(body)["Code"]) == (405, "MethodNotAllowed")


async def test_put_on_a_job_without_cancel_is_refused(emulator: Emulator) -> None:
    created = await create(emulator.sdk())
    status, body, _ = await raw_call(emulator, "PUT", f"/inventorytriggerjob/{created['JobId']}")
    assert (status, error_of(body)["Code"]) == (400, "InvalidArgument")


async def test_cirelays_signer_with_an_unsigned_cancel_is_accepted(emulator: Emulator) -> None:
    created = await create(emulator.sdk())
    status, body, request_id = await raw_call(
        emulator,
        "PUT",
        f"/inventorytriggerjob/{created['JobId']}",
        extra_query="cancel",
        credentials=Credentials(SECRET_ID, SECRET_KEY),
    )
    assert (status, body) == (200, b"")
    assert request_id


async def test_the_readiness_probe_needs_no_signature(emulator: Emulator) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(emulator.endpoint + "/") as response,
    ):
        assert response.status == 200
        assert "emulator" in await response.text()


async def test_the_sdk_cannot_read_ci_errors_itself(emulator: Emulator) -> None:
    # CI's <Error> has no <Resource>, which the SDK's parser requires: callers must parse it.
    with pytest.raises(CosServiceError) as caught:
        await sdk_call(
            emulator.sdk(secret_key="wrong").ci_list_inventory_trigger_jobs,
            Bucket=BUCKET,
            Type="Job",
        )
    assert caught.value.get_error_code() == "Unknown"
