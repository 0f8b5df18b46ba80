"""TaskFinish callbacks arriving at a local receiver, in XML and in JSON, with retries."""

from __future__ import annotations

import json
import re
from typing import Any

from service.emulator.records import FAILURE_CODE
from service.xmlsafe import parse_xml
from tests.emulator.conftest import (
    BUCKET,
    QUEUE_ID,
    REGION,
    Receiver,
    StartEmulator,
    emulator_settings,
    wait_idle,
)
from tests.emulator.test_sdk import create, sdk_call

CI_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+0800")


def xml_detail(body: bytes) -> dict[str, Any]:
    response = parse_xml(body)["Response"]
    assert response["EventName"] == "TaskFinish"
    detail: dict[str, Any] = response["JobsDetail"]
    return detail


async def test_an_xml_callback_carries_the_whole_documented_jobs_detail(
    start_emulator: StartEmulator, receiver: Receiver
) -> None:
    emulator = await start_emulator()
    sdk = emulator.sdk()
    batch = await create(sdk, Input={"Object": "input/demo.mp4"}, CallBack=receiver.url)

    (arrived,) = await receiver.wait_for(1)
    detail = xml_detail(arrived.body)

    assert arrived.content_type == "application/xml"
    assert re.fullmatch(r"j[0-9a-f]{32}", detail["JobId"])
    assert detail["Code"] == "Success"
    assert detail["Tag"] == "Transcode"
    assert detail["State"] == "Success"
    assert detail["QueueId"] == QUEUE_ID
    for name in ("CreationTime", "StartTime", "EndTime"):
        assert CI_TIME.fullmatch(detail[name]), name
    assert detail["Input"] == {"BucketId": BUCKET, "Object": "input/demo.mp4", "Region": REGION}
    operation = detail["Operation"]
    output_object = f"output/{batch['JobId']}/demo.mp4"
    assert operation["TemplateId"] == "t1460606b9752148c4ab182f55163ba7cd"
    assert "TemplateName" in operation
    assert operation["Output"] == {
        "Region": "ap-chongqing",
        "Bucket": "test-1234567890",
        "Object": output_object,
    }
    output_file = operation["MediaResult"]["OutputFile"]
    assert output_file["Bucket"] == "test-1234567890"
    assert output_file["Region"] == "ap-chongqing"
    assert output_file["ObjectName"] == output_object
    assert output_file["Md5Info"]["ObjectName"] == output_object
    assert re.fullmatch(r"[0-9a-f]{32}", output_file["Md5Info"]["Md5"])
    assert operation["UserData"] == "this is my inventorytriggerjob"
    assert operation["JobLevel"] == "0"

    # Polling rebuilds the same JobsDetail: a missed callback can be recovered.
    queried = await sdk_call(sdk.ci_get_media_jobs, Bucket=BUCKET, JobIDs=detail["JobId"])
    assert queried["JobsDetail"][0] == detail


async def test_json_callbacks_have_cis_inconsistent_shapes(
    start_emulator: StartEmulator, receiver: Receiver
) -> None:
    emulator = await start_emulator(emulator_settings(emulator_objects_per_prefix=8))
    await create(emulator.sdk(), CallBack=receiver.url, CallBackFormat="JSON", JobLevel="2")

    arrived = await receiver.wait_for(8)

    shapes, md5_shapes = set(), set()
    for item in arrived:
        assert item.content_type == "application/json"
        document = json.loads(item.body)
        assert document["EventName"] == "TaskFinish"
        jobs_detail = document["JobsDetail"]
        shapes.add(type(jobs_detail).__name__)
        detail = jobs_detail[0] if isinstance(jobs_detail, list) else jobs_detail
        assert detail["State"] == "Success"
        assert detail["Operation"]["JobLevel"] == 2
        assert isinstance(detail["Input"]["Object"], str)
        output_file = detail["Operation"]["MediaResult"]["OutputFile"]
        assert isinstance(output_file["ObjectName"], list)
        md5_shapes.add(type(output_file["Md5Info"]).__name__)
    # Seeded: the same run every time, with both shapes of each inconsistent node present.
    assert shapes == {"dict", "list"}
    assert md5_shapes == {"dict", "list"}


async def test_callback_no_and_no_callback_send_nothing(
    start_emulator: StartEmulator, receiver: Receiver
) -> None:
    emulator = await start_emulator()
    await create(emulator.sdk(), CallBack="no")
    await create(emulator.sdk())
    await wait_idle(emulator)

    assert emulator.stats.media_jobs_ended == {"Success": 6}
    assert emulator.stats.callbacks_due == 0
    assert receiver.attempts == 0


async def test_a_failed_delivery_is_retried(
    start_emulator: StartEmulator, receiver: Receiver
) -> None:
    receiver.fail_first = 2
    emulator = await start_emulator(emulator_settings(emulator_callback_retries=3))
    await create(emulator.sdk(), Input={"Object": "a.mp4"}, CallBack=receiver.url)
    await wait_idle(emulator)

    assert len(receiver.received) == 1
    assert receiver.attempts == 3
    assert emulator.stats.callbacks_attempts == 3
    assert emulator.stats.callbacks_delivered == 1
    assert emulator.stats.callbacks_failed == 0


async def test_delivery_gives_up_after_its_retries(
    start_emulator: StartEmulator, receiver: Receiver
) -> None:
    receiver.fail_first = 100
    emulator = await start_emulator(emulator_settings(emulator_callback_retries=2))
    await create(emulator.sdk(), Input={"Object": "a.mp4"}, CallBack=receiver.url)
    await wait_idle(emulator)

    assert receiver.attempts == 3
    assert receiver.received == []
    assert emulator.stats.callbacks_failed == 1


async def test_an_unreachable_callback_url_is_retried_then_abandoned(
    start_emulator: StartEmulator,
) -> None:
    emulator = await start_emulator(emulator_settings(emulator_callback_retries=1))
    # Port 9 on loopback (discard) has no listener here: every attempt is refused.
    await create(emulator.sdk(), Input={"Object": "a.mp4"}, CallBack="http://127.0.0.1:9/cb")
    await wait_idle(emulator)

    assert emulator.stats.callbacks_attempts == 2
    assert emulator.stats.callbacks_failed == 1


async def test_a_failed_media_job_reports_its_error(
    start_emulator: StartEmulator, receiver: Receiver
) -> None:
    emulator = await start_emulator(emulator_settings(emulator_failure_rate=1.0))
    batch = await create(emulator.sdk(), CallBack=receiver.url)

    arrived = await receiver.wait_for(3)
    await wait_idle(emulator)

    for item in arrived:
        detail = xml_detail(item.body)
        assert detail["State"] == "Failed"
        assert detail["Code"] == FAILURE_CODE
        assert detail["Message"]
        assert "MediaResult" not in detail["Operation"]
    answer = await sdk_call(
        emulator.sdk().ci_get_inventory_trigger_jobs, Bucket=BUCKET, JobID=batch["JobId"]
    )
    (final,) = answer["JobsDetail"]
    assert final["State"] == "Failed"
    assert final["Code"] == FAILURE_CODE
    assert final["Message"] == "3 of 3 media jobs failed"


async def test_tdmq_delivery_without_a_broker_configured_fails_visibly(
    start_emulator: StartEmulator,
) -> None:
    emulator = await start_emulator(emulator_settings(emulator_callback_retries=0))
    await create(
        emulator.sdk(),
        Input={"Object": "a.mp4"},
        CallBackType="TDMQ",
        CallBackMqConfig={"MqRegion": "gz", "MqMode": "Queue", "MqName": "ci-events"},
    )
    await wait_idle(emulator)

    assert emulator.stats.callbacks_due == 1
    assert emulator.stats.callbacks_failed == 1
    assert emulator.stats.callbacks_delivered == 0
