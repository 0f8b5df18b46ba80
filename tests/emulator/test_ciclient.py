"""cirelay's own CI client against the emulator: every call, and how faults surface in it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from service.ci.client import CIClient
from service.ci.errors import CIPermanentError, CIRetryableError
from service.ci.signing import Credentials
from service.xmlsafe import unparse_xml
from tests.emulator.conftest import (
    BUCKET,
    REGION,
    SECRET_ID,
    SECRET_KEY,
    Emulator,
    StartEmulator,
    batch_request,
    emulator_settings,
    wait_idle,
)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def client_for(emulator: Emulator, session: aiohttp.ClientSession, **creds: str) -> CIClient:
    credentials = Credentials(
        creds.get("secret_id", SECRET_ID),
        creds.get("secret_key", SECRET_KEY),
        creds.get("token", ""),
    )
    return CIClient(session, credentials, endpoint=emulator.endpoint)


def request_xml(**operation: str) -> bytes:
    return unparse_xml({"Request": batch_request(**operation)})


async def test_every_call_of_the_client(emulator: Emulator, session: aiohttp.ClientSession) -> None:
    client = client_for(emulator, session)
    created = await client.create(BUCKET, REGION, request_xml(Name="by-client"))
    other = await client.create(BUCKET, REGION, request_xml(Name="other"))
    await wait_idle(emulator)

    got = await client.get(BUCKET, REGION, created.job_id)
    missing = await client.get(BUCKET, REGION, "b" + "0" * 32)
    by_name = await client.list(BUCKET, REGION, name="by-client")
    first_page = await client.list(BUCKET, REGION, size=1)
    children = await client.list_media_jobs(
        BUCKET, REGION, tag="Transcode", inventory_trigger_job_id=created.job_id
    )
    queried = await client.get_media_jobs(
        BUCKET, REGION, [children.jobs[0]["JobId"], "j" + "0" * 32]
    )

    assert created.name == "by-client"
    assert got is not None
    assert got.state == "Success"
    assert missing is None
    assert [j.job_id for j in by_name.jobs] == [created.job_id]
    assert [j.job_id for j in first_page.jobs] == [other.job_id]
    assert first_page.next_token
    assert len(children.jobs) == 3
    assert {j["Input"]["Object"] for j in children.jobs} == {
        f"input/object-{n}.mp4" for n in (1, 2, 3)
    }
    assert [j["JobId"] for j in queried.jobs] == [children.jobs[0]["JobId"]]
    assert queried.non_exist_job_ids == ("j" + "0" * 32,)


async def test_cancel_calls_of_the_client(
    emulator: Emulator, session: aiohttp.ClientSession
) -> None:
    client = client_for(emulator, session)
    emulator.engine.pause()
    batch = await client.create(BUCKET, REGION, request_xml())
    other = await client.create(BUCKET, REGION, request_xml(Name="other"))
    media = await client.list_media_jobs(
        BUCKET, REGION, tag="Transcode", inventory_trigger_job_id=other.job_id
    )

    await client.cancel(BUCKET, REGION, batch.job_id)
    await client.cancel_media_job(BUCKET, REGION, media.jobs[0]["JobId"])
    emulator.engine.resume()
    await wait_idle(emulator)

    cancelled = await client.get(BUCKET, REGION, batch.job_id)
    after = await client.get_media_jobs(BUCKET, REGION, [media.jobs[0]["JobId"]])
    assert cancelled is not None
    assert cancelled.state == "Cancel"
    assert after.jobs[0]["State"] == "Cancel"


async def test_refusals_surface_as_permanent_errors(
    emulator: Emulator, session: aiohttp.ClientSession
) -> None:
    with pytest.raises(CIPermanentError) as wrong_key:
        await client_for(emulator, session, secret_key="wrong").list(BUCKET, REGION)
    with pytest.raises(CIPermanentError) as invalid:
        await client_for(emulator, session).create(BUCKET, REGION, request_xml(JobLevel="7"))

    assert (wrong_key.value.status, wrong_key.value.code) == (403, "SignatureDoesNotMatch")
    assert (invalid.value.status, invalid.value.code) == (400, "InvalidArgument")
    assert "Request.Operation.JobLevel" in invalid.value.message


async def test_injected_faults_surface_as_retryable_errors(
    start_emulator: StartEmulator, session: aiohttp.ClientSession
) -> None:
    throttled = await start_emulator(emulator_settings(emulator_throttle_rate=1.0))
    failing = await start_emulator(emulator_settings(emulator_error_rate=1.0))

    with pytest.raises(CIRetryableError) as slow_down:
        await client_for(throttled, session).list(BUCKET, REGION)
    with pytest.raises(CIRetryableError) as internal:
        await client_for(failing, session).list(BUCKET, REGION)

    assert slow_down.value.throttled
    assert slow_down.value.code == "SlowDown"
    assert (internal.value.status, internal.value.code) == (500, "InternalError")
