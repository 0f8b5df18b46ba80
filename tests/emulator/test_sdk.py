"""The official cos-python-sdk-v5, unchanged, against the emulator: create, get, list, cancel."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from qcloud_cos import CosS3Client
from qcloud_cos.cos_exception import CosServiceError

from service.emulator.records import CANCEL, SUBMITTED, SUCCESS
from service.emulator.times import CST, ci_time
from service.xmlsafe import parse_xml
from tests.emulator.conftest import (
    BUCKET,
    Emulator,
    batch_request,
    wait_idle,
)

CI_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+0800")


async def sdk_call(call: Callable[..., Any], **kwargs: Any) -> Any:
    # The SDK is synchronous: run it off the event loop that serves the emulator.
    return await asyncio.to_thread(call, **kwargs)


async def sdk_error(call: Callable[..., Any], **kwargs: Any) -> tuple[int, dict[str, Any]]:
    """Status and CI error document of a refused call (the SDK's own parser needs <Resource>)."""
    with pytest.raises(CosServiceError) as caught:
        await sdk_call(call, **kwargs)
    error = caught.value
    return error.get_status_code(), parse_xml(error.get_origin_msg().encode())["Error"]


async def create(sdk: CosS3Client, bucket: str = BUCKET, **operation: Any) -> dict[str, Any]:
    answer = await sdk_call(
        sdk.ci_create_inventory_trigger_jobs, Bucket=bucket, JobBody=batch_request(**operation)
    )
    detail: dict[str, Any] = answer["JobsDetail"][0]
    return detail


async def get_batch(sdk: CosS3Client, job_id: str) -> dict[str, Any]:
    answer: dict[str, Any] = await sdk_call(
        sdk.ci_get_inventory_trigger_jobs, Bucket=BUCKET, JobID=job_id
    )
    return answer


async def list_all(sdk: CosS3Client, **filters: Any) -> list[dict[str, Any]]:
    """Every page of the batch list, following NextToken."""
    found: list[dict[str, Any]] = []
    token = ""
    while True:
        page = await sdk_call(
            sdk.ci_list_inventory_trigger_jobs,
            Bucket=BUCKET,
            Type="Job",
            NextToken=token,
            **filters,
        )
        found += page.get("JobsDetail", [])
        token = page.get("NextToken") or ""
        if not token:
            return found


async def test_create_answers_the_documented_jobs_detail(emulator: Emulator) -> None:
    sdk = emulator.sdk()
    body = batch_request()
    answer = await sdk_call(sdk.ci_create_inventory_trigger_jobs, Bucket=BUCKET, JobBody=body)

    assert answer["RequestId"]
    (detail,) = answer["JobsDetail"]
    assert re.fullmatch(r"b[0-9a-f]{32}", detail["JobId"])
    assert detail["Code"] == "Success"
    assert detail["Type"] == "Job"
    assert detail["Name"] == "demo"
    assert detail["State"] in (SUBMITTED, "Running")
    assert CI_TIME.fullmatch(detail["CreationTime"])
    assert detail["Input"] == {"Prefix": "input"}
    assert detail["Operation"] == body["Operation"]


async def test_get_follows_the_batch_to_success(emulator: Emulator) -> None:
    sdk = emulator.sdk()
    created = await create(sdk)
    await wait_idle(emulator)

    answer = await get_batch(sdk, created["JobId"])

    (detail,) = answer["JobsDetail"]
    assert detail["JobId"] == created["JobId"]
    assert detail["State"] == SUCCESS
    assert CI_TIME.fullmatch(detail["StartTime"])
    assert CI_TIME.fullmatch(detail["EndTime"])
    assert "NonExistJobIds" not in answer


async def test_get_of_an_unknown_job_lists_it_as_non_existent(emulator: Emulator) -> None:
    unknown = "b" + "0" * 32
    answer = await get_batch(emulator.sdk(), unknown)
    assert answer["NonExistJobIds"] == unknown
    assert "JobsDetail" not in answer


async def test_jobs_belong_to_the_bucket_of_the_signed_host(emulator: Emulator) -> None:
    sdk = emulator.sdk()
    created = await create(sdk, bucket="other-1250000000")

    answer = await get_batch(sdk, created["JobId"])
    assert answer["NonExistJobIds"] == created["JobId"]
    assert await list_all(sdk) == []
    assert emulator.stats.batches_created == {"other-1250000000": 1}


async def test_list_pages_through_every_batch_with_next_token(emulator: Emulator) -> None:
    sdk = emulator.sdk()
    ids = [(await create(sdk, Name=f"batch-{n}"))["JobId"] for n in range(5)]

    newest_first = await list_all(sdk, Size=2)
    oldest_first = await list_all(sdk, Size=2, OrderByTime="Asc")

    assert [d["JobId"] for d in newest_first] == ids[::-1]
    assert [d["JobId"] for d in oldest_first] == ids


async def test_list_filters(emulator: Emulator) -> None:
    sdk = emulator.sdk()
    first = await create(sdk, Name="first")
    await create(sdk, Name="second")
    await wait_idle(emulator)
    emulator.engine.pause()
    waiting = await create(sdk, Name="waiting")

    by_name = await list_all(sdk, Name="second")
    by_id = await list_all(sdk, JobId=first["JobId"])
    submitted = await list_all(sdk, States="Submitted")
    finished = await list_all(sdk, States="Success,Failed")
    now = datetime.now(CST)
    in_window = await list_all(
        sdk,
        StartCreationTime=ci_time(now - timedelta(hours=1)),
        EndCreationTime=ci_time(now + timedelta(hours=1)),
    )
    before = await list_all(sdk, EndCreationTime=ci_time(now - timedelta(hours=1)))
    in_workflow = await list_all(sdk, WorkflowId="w0123456789abcdef")

    assert [d["Name"] for d in by_name] == ["second"]
    assert [d["JobId"] for d in by_id] == [first["JobId"]]
    assert [d["JobId"] for d in submitted] == [waiting["JobId"]]
    assert [d["Name"] for d in finished] == ["second", "first"]
    assert len(in_window) == 3
    assert before == []
    assert in_workflow == []


async def test_the_sdks_default_list_type_hides_job_batches(emulator: Emulator) -> None:
    sdk = emulator.sdk()
    await create(sdk)
    # ci_list_inventory_trigger_jobs defaults to Type=Workflow, as CI's own list does not show
    # Job-type batches under it: cirelay always sends type=Job.
    page = await sdk_call(sdk.ci_list_inventory_trigger_jobs, Bucket=BUCKET)
    assert "JobsDetail" not in page


@pytest.mark.parametrize(
    ("filters", "named"),
    [
        ({"Size": 0}, "size"),
        ({"Size": 101}, "size"),
        ({"States": "Done"}, "states"),
        ({"OrderByTime": "Sideways"}, "orderByTime"),
        ({"NextToken": "not-a-token"}, "nextToken"),
        ({"StartCreationTime": "yesterday"}, "startCreationTime"),
        ({"Type": "Batch"}, "type"),
    ],
)
async def test_list_refuses_bad_parameters(
    emulator: Emulator, filters: dict[str, Any], named: str
) -> None:
    arguments = {"Type": "Job", **filters}
    status, error = await sdk_error(
        emulator.sdk().ci_list_inventory_trigger_jobs, Bucket=BUCKET, **arguments
    )
    assert status == 400
    assert error["Code"] == "InvalidArgument"
    assert named in error["Message"]


async def test_cancel_stops_a_batch_before_its_media_jobs_run(emulator: Emulator) -> None:
    sdk = emulator.sdk()
    emulator.engine.pause()
    created = await create(sdk)

    await sdk_call(sdk.ci_delete_inventory_trigger_jobs, Bucket=BUCKET, JobId=created["JobId"])
    await sdk_call(sdk.ci_delete_inventory_trigger_jobs, Bucket=BUCKET, JobId=created["JobId"])
    emulator.engine.resume()
    await wait_idle(emulator)

    answer = await get_batch(sdk, created["JobId"])
    assert answer["JobsDetail"][0]["State"] == CANCEL
    children = [j for j in emulator.engine.media.values() if j.batch_id == created["JobId"]]
    assert len(children) == 3
    assert all(j.state == CANCEL and j.run_seq == 0 for j in children)


async def test_cancel_of_a_finished_batch_is_refused(emulator: Emulator) -> None:
    sdk = emulator.sdk()
    created = await create(sdk)
    await wait_idle(emulator)

    status, error = await sdk_error(
        sdk.ci_delete_inventory_trigger_jobs, Bucket=BUCKET, JobId=created["JobId"]
    )
    assert (status, error["Code"]) == (400, "InvalidArgument")
    assert "Success" in error["Message"]


async def test_cancel_of_an_unknown_batch_is_not_found(emulator: Emulator) -> None:
    status, error = await sdk_error(
        emulator.sdk().ci_delete_inventory_trigger_jobs, Bucket=BUCKET, JobId="b" + "1" * 32
    )
    assert (status, error["Code"]) == (404, "ResourceNotFound")


async def test_media_jobs_are_queried_listed_and_cancelled(emulator: Emulator) -> None:
    sdk = emulator.sdk()
    emulator.engine.pause()
    created = await create(sdk)
    children = sorted(
        (j for j in emulator.engine.media.values() if j.batch_id == created["JobId"]),
        key=lambda j: j.seq,
    )
    await sdk_call(sdk.ci_cancel_jobs, Bucket=BUCKET, JobID=children[0].job_id)
    emulator.engine.resume()
    await wait_idle(emulator)

    unknown = "j" + "0" * 32
    ids = ",".join([children[0].job_id, children[1].job_id, unknown])
    queried = await sdk_call(sdk.ci_get_media_jobs, Bucket=BUCKET, JobIDs=ids)
    pages = [await sdk_call(sdk.ci_list_media_jobs, Bucket=BUCKET, Tag="Transcode", Size=2)]
    pages.append(
        await sdk_call(
            sdk.ci_list_media_jobs,
            Bucket=BUCKET,
            Tag="Transcode",
            Size=2,
            NextToken=pages[0]["NextToken"],
        )
    )
    other_tag = await sdk_call(sdk.ci_list_media_jobs, Bucket=BUCKET, Tag="Snapshot")

    states = {d["JobId"]: d["State"] for d in queried["JobsDetail"]}
    assert states == {children[0].job_id: CANCEL, children[1].job_id: SUCCESS}
    assert queried["NonExistJobIds"] == unknown
    listed = [d["JobId"] for page in pages for d in page["JobsDetail"]]
    assert listed == [j.job_id for j in reversed(children)]
    assert not pages[1]["NextToken"]
    assert "JobsDetail" not in other_tag
    batch = await get_batch(sdk, created["JobId"])
    assert batch["JobsDetail"][0]["State"] == SUCCESS


async def test_media_list_requires_a_tag(emulator: Emulator) -> None:
    status, error = await sdk_error(emulator.sdk().ci_list_media_jobs, Bucket=BUCKET, Tag="")
    assert (status, error["Code"]) == (400, "InvalidArgument")
    assert "tag" in error["Message"]
